from __future__ import annotations

import pytest

from components.serving.breaker import CircuitBreaker, State
from components.core.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    options = dict(failure_rate=0.5, window=10, min_calls=4, open_seconds=30, half_open_calls=2)
    options.update(kw)
    return CircuitBreaker(clock=clock, **options)  # type: ignore[arg-type]


def run(b: CircuitBreaker, failure: bool) -> None:
    trial = b.before_call()
    b.record(failure=failure, trial=trial)


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    b = breaker(Clock())
    for _ in range(3):
        run(b, True)
    assert b.state is State.CLOSED


def test_opens_on_failure_rate_and_refuses_with_retry_after() -> None:
    clock = Clock()
    b = breaker(clock)
    for failure in (False, True, False, True):
        run(b, failure)
    assert b.state is State.OPEN
    clock.now += 10
    with pytest.raises(Unavailable) as info:
        b.before_call()
    assert info.value.code == "circuit_open"
    assert info.value.headers["retry-after"] == "20"


def test_rate_below_threshold_stays_closed() -> None:
    b = breaker(Clock())
    for failure in (False, False, False, True, False, False):
        run(b, failure)
    assert b.state is State.CLOSED


def test_open_to_half_open_after_wait_then_closed_after_trial_successes() -> None:
    clock = Clock()
    changes: list[State] = []
    b = breaker(clock, min_calls=2)
    b._on_change = changes.append
    run(b, True)
    run(b, True)
    clock.now += 30
    assert b.state is State.HALF_OPEN
    first, second = b.before_call(), b.before_call()
    assert first and second
    with pytest.raises(Unavailable):  # only half_open_calls trials at once
        b.before_call()
    b.record(failure=False, trial=first)
    b.record(failure=False, trial=second)
    assert b.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_half_open_failure_reopens() -> None:
    clock = Clock()
    b = breaker(clock, min_calls=1)
    run(b, True)
    clock.now += 31
    trial = b.before_call()
    b.record(failure=True, trial=trial)
    assert b.state is State.OPEN


def test_disconnected_trial_frees_its_place() -> None:
    clock = Clock()
    b = breaker(clock, min_calls=1, half_open_calls=1)
    run(b, True)
    clock.now += 31
    trial = b.before_call()
    b.release_trial(trial)
    assert b.before_call() is True


def test_sliding_window_forgets_old_outcomes() -> None:
    b = breaker(Clock(), window=4, min_calls=4)
    for failure in (True, True, False, False):  # 50% of the window: opens
        run(b, failure)
    assert b.state is State.OPEN
    b2 = breaker(Clock(), window=4, min_calls=4)
    for failure in (True, False, False, False, False):  # the first failure slid out
        run(b2, failure)
    assert b2.state is State.CLOSED


def test_forced_open_never_half_opens() -> None:
    clock = Clock()
    b = breaker(clock)
    b.force_open("engine dead")
    clock.now += 3600
    assert b.state is State.OPEN
    with pytest.raises(Unavailable) as info:
        b.before_call()
    assert "engine dead" in info.value.message
