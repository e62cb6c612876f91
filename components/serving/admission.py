"""Admission control, counted in engine sequences: at most `capacity` sequences in the
engine, at most `max_waiting` requests queued, a bounded wait, and an immediate 429/503
beyond that.

Per key: at most `running_per_key` sequences in the engine (more of its requests wait) and
at most `queued_per_key` requests waiting (429 beyond), so one key cannot take every queue
place. Whenever capacity frees up or a request arrives, every waiting request that fits is
started, so a large request cannot hold back smaller ones while capacity sits idle; a key's
requests start oldest first, and which key's goes next is the ranking's choice
(components/serving/ranking.py: by default class, then the key's running sequences, then age).

A hand-written queue: asyncio.Semaphore hides its waiters, cannot refuse at a bound, and
knows neither costs nor keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from components.core.errors import InvalidRequest, Overloaded, RateLimited, Unavailable
from components.core.priority import STANDARD
from components.serving.ranking import Choice, ClassRanking, Ranking, Running, Waiting

K = TypeVar("K")


@dataclass(eq=False)
class _Waiter:
    waiting: Waiting
    share: int
    future: asyncio.Future[Choice] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def key(self) -> str:
        return self.waiting.key


class Slot:
    """`cost` sequences running for one key; `release()` gives them back, once. `klass`:
    the class it started as (aged); `engine_priority`: what vLLM's scheduler is to see."""

    def __init__(self, admission: Admission, choice: Choice) -> None:
        self._admission: Admission | None = admission
        self.key = choice.waiting.key
        self.cost = choice.waiting.cost
        self.klass = choice.klass
        self.engine_priority = choice.engine_priority

    def release(self) -> None:
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self.key, self.cost, self.klass)


class Admission:
    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        max_wait_s: float,
        running_per_key: int = 0,
        queued_per_key: int = 0,
        on_change: Callable[[int, int], None] | None = None,
        ranking: Ranking | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.ranking: Ranking = ranking or ClassRanking(batch_seqs=capacity, key_yield_s=max_wait_s)
        self._clock = clock
        # The ranking reads times as seconds since this moment (small numbers for vLLM's).
        self._epoch = clock()
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        # A share above capacity would let a request wait for room that never comes.
        self.running_per_key = min(running_per_key or capacity, capacity)
        self.queued_per_key = queued_per_key or max_waiting
        self.running = 0  # sequences in the engine
        self._running_by_key: dict[str, int] = defaultdict(int)
        self._running_by_class: dict[int, int] = defaultdict(int)
        self._queued_by_key: dict[str, int] = defaultdict(int)
        self._queue: deque[_Waiter] = deque()
        self._closed: Unavailable | None = None
        self._on_change = on_change or (lambda running, waiting: None)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running_by_class(self) -> Mapping[int, int]:
        """Sequences in the engine by the class their request started as."""
        return dict(self._running_by_class)

    def running_for(self, key: str) -> int:
        return self._running_by_key.get(key, 0)

    def queued_for(self, key: str) -> int:
        return self._queued_by_key.get(key, 0)

    def close(self, reason: str, code: str = "shutting_down") -> None:
        """Refuse new requests from now on (draining, engine death); queued ones too."""
        self._closed = Unavailable(reason, code=code, headers={"retry-after": "5"})
        while self._queue:
            waiter = self._queue.popleft()
            self._dequeued(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(self._closed)
        self._changed()

    def _now(self) -> float:
        return self._clock() - self._epoch

    def _changed(self) -> None:
        self._on_change(self.running, len(self._queue))

    def _dequeued(self, waiter: _Waiter) -> None:
        _decrement(self._queued_by_key, waiter.key, 1)

    async def acquire(self, key: str, cost: int = 1, share: int | None = None, level: int = STANDARD) -> Slot:
        """`share`: this key's own cap on running sequences (at most the service's);
        `level`: its priority class (components/core/priority.py, lower first)."""
        if self._closed is not None:
            raise self._closed
        share = min(share or self.running_per_key, self.running_per_key)
        if cost > share:
            raise InvalidRequest(
                f"The request asks for {cost} sequences (n x prompts); at most {share} run at once "
                "for one key.", param="n", code="too_many_sequences",
            )
        refusal = self.ranking.refusal(cost, level)
        if refusal is not None:
            raise InvalidRequest(refusal, param="n", code="too_many_sequences")
        waiter = _Waiter(Waiting(key, cost, level, self._now()), share)
        self._queue.append(waiter)
        self._queued_by_key[key] += 1
        # After every change _dispatch() has started whatever fits, so a request that fits
        # now starts now; one that does not must find a place in the queue.
        self._dispatch()
        if not waiter.future.done():
            self._refuse_beyond_the_bounds(waiter)
        self._changed()
        if waiter.future.done():
            return Slot(self, waiter.future.result())
        try:
            async with asyncio.timeout(self.max_wait_s):
                choice = await asyncio.shield(waiter.future)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                # Granted in the meantime, but nobody will use it: give it back.
                Slot(self, waiter.future.result()).release()
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self._dequeued(waiter)
                self._dispatch()  # a big waiter leaving may let smaller ones in
                self._changed()
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"No capacity freed up within {self.max_wait_s:g} s; retry shortly.",
                    headers={"retry-after": "1"},
                ) from None
            raise
        return Slot(self, choice)

    def _refuse_beyond_the_bounds(self, waiter: _Waiter) -> None:
        """A request that did not start may wait only within the queue's bounds."""
        error: Overloaded | RateLimited | None = None
        if len(self._queue) > self.max_waiting:
            error = Overloaded(
                f"The server is at capacity ({self.capacity} sequences running, {self.max_waiting} queued); "
                "retry shortly.", headers={"retry-after": "1"},
            )
        elif self.queued_for(waiter.key) > self.queued_per_key:
            error = RateLimited(
                f"Too many queued requests for this key (at most {self.queued_per_key}); retry shortly.",
                code="concurrency_limit_exceeded", headers={"retry-after": "1", "retry-after-ms": "1000"},
            )
        if error is not None:
            self._queue.remove(waiter)
            self._dequeued(waiter)
            self._changed()
            raise error

    def _fits(self, waiter: _Waiter) -> bool:
        cost = waiter.waiting.cost
        return self.running + cost <= self.capacity and self.running_for(waiter.key) + cost <= waiter.share

    def _release(self, key: str, cost: int, klass: int) -> None:
        self.running -= cost
        _decrement(self._running_by_class, klass, cost)
        _decrement(self._running_by_key, key, cost)
        self._dispatch()
        self._changed()

    def _dispatch(self) -> None:
        """Start every waiting request that fits, in the ranking's order: of each key, its
        oldest request first."""
        running = Running(self._running_by_key, self._running_by_class)
        while True:
            heads: dict[str, _Waiter] = {}
            for waiter in self._queue:
                heads.setdefault(waiter.key, waiter)
            ready = [waiter for waiter in heads.values() if self._fits(waiter)]
            choice = self.ranking.choose([waiter.waiting for waiter in ready], running, self._now()) if ready else None
            if choice is None:
                return
            chosen = next(waiter for waiter in ready if waiter.waiting is choice.waiting)
            self._queue.remove(chosen)
            self._dequeued(chosen)
            self.running += choice.waiting.cost
            self._running_by_class[choice.klass] += choice.waiting.cost
            self._running_by_key[chosen.key] += choice.waiting.cost
            chosen.future.set_result(choice)


def _decrement(counts: dict[K, int], key: K, by: int) -> None:
    counts[key] -= by
    if counts[key] <= 0:
        del counts[key]


def per_key_shares(max_num_seqs: int, max_queue_size: int, max_inflight_per_key: int | None,
                   max_queued_per_key: int | None) -> tuple[int, int]:
    """(sequences running, requests queued) one key may hold. By default a key may use the
    whole engine when it is alone (the fair queue serves other keys first as sequences end)
    but only half of the queue, so that another key always finds a place."""
    running = max_inflight_per_key or max_num_seqs
    queued = max_queued_per_key or max(1, max_queue_size // 2)
    return running, queued
