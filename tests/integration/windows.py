"""Runs that must fall in one token window, whatever the host's speed.

The token ledger counts fixed windows of the server's wall clock (the bucket of a charge is
`int(time.time() // 60)` on the replica, components/edge/ledger.py), and the servers of
these tests run on this host, reading the same clock as the test. So a run that began and
ended in one minute, by this clock, had every charge and every reading of it in that
window, however long it took; one that straddled two minutes is not judged but run again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from harness.server import wait_until

T = TypeVar("T")
MINUTE = 60


def minute_of(t: float) -> int:
    return int(t // MINUTE)


def in_one_minute(run: Callable[[], T], tries: int = 3, at_a_minute_start: bool = True) -> T:
    """`run()`'s result from a try that began and ended in one minute. A later try begins in
    a minute after the one the previous try ended in, so it finds that window untouched by
    earlier tries. `at_a_minute_start`: begin each try early in a minute (a burst then has the
    whole minute, so a slow host rarely needs a second try; it is not a bound on the run)."""
    ended: float | None = None
    for _ in range(tries):
        if ended is not None:
            later = minute_of(ended)
            assert wait_until(lambda: minute_of(time.time()) > later, MINUTE + 5, interval=0.2)
        if at_a_minute_start:
            assert wait_until(lambda: time.time() % MINUTE < 5, MINUTE + 5, interval=0.2)
        began = time.time()
        result = run()
        ended = time.time()
        if minute_of(began) == minute_of(ended):
            return result
    pytest.fail(f"each of {tries} tries straddled two token windows (the last took {ended - began:.0f} s)")
