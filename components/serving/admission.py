"""Admission control, counted in engine sequences: at most `capacity` sequences in the
engine, at most `max_waiting` requests queued, a bounded wait, and an immediate 429/503
beyond that.

Per key: at most `running_per_key` sequences in the engine (more of its requests wait) and
at most `queued_per_key` requests waiting (429 beyond), so one key cannot take every queue
place. Whenever capacity frees up or a request arrives, every waiting request that fits is
started, so a large request cannot hold back smaller ones while capacity sits idle; a key's
requests start earliest deadline first, else oldest first, and which key's goes next is the
ranking's choice (components/serving/ranking.py: by default class, then the key's running
sequences, then deadline, then age).

A request with a deadline (when it must have started) is refused at once when it is
predicted to start later (components/serving/forecast.py); a waiting one is dropped when its
deadline passes, never started late. A sheddable request never waits.
What a started request holds, and the number vLLM's queue sees for it: grants.py.

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
from components.serving import deadlines
from components.serving.deadlines import ServiceRate, retry_after
from components.serving.forecast import Forecast
from components.serving.grants import EngineOrder, Slot
from components.serving.ranking import Choice, ClassRanking, Ranking, Running, Waiting, earlier_deadline

K = TypeVar("K")


@dataclass(eq=False)
class _Waiter:
    waiting: Waiting
    share: int
    future: asyncio.Future[Choice] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def key(self) -> str:
        return self.waiting.key


__all__ = ["Admission", "Slot"]


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
        batch_size: int | None = None,
        rate: ServiceRate | None = None,
        on_deadline: Callable[[str], None] | None = None,
        headroom: int = 0,
    ) -> None:
        """`batch_size`: the engine's batch (MAX_NUM_SEQS; unset: `capacity`), the rest of
        `capacity` waits in vLLM's queue; `headroom`: the engine's places beyond it for
        requests that outrank a running one (PRIORITY_HEADROOM). `on_deadline`: told "arrival" or "queued" per
        deadline refusal, "granted_late" per grant past a deadline (never)."""
        self.capacity = capacity
        self.batch_size = min(batch_size or capacity, capacity)
        self._on_deadline = on_deadline or (lambda when: None)
        self.ranking: Ranking = ranking or ClassRanking(batch_seqs=capacity, key_yield_s=max_wait_s)
        self._clock = clock
        # The ranking reads times as seconds since this moment (small numbers for vLLM's).
        self._epoch = clock()
        self.forecast = Forecast(self.batch_size, rate, self._epoch, headroom)
        self.rate = self.forecast.rate
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
        self._engine_order = EngineOrder()
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
        self.forecast.observe(self._now(), self.running)
        # Beyond the batch, sequences wait in vLLM's queue: they count as waiting.
        beyond = max(0, self.running - self.batch_size)
        self._on_change(self.running - beyond, len(self._queue) + beyond)

    def _dequeued(self, waiter: _Waiter) -> None:
        _decrement(self._queued_by_key, waiter.key, 1)

    async def acquire(self, key: str, cost: int = 1, share: int | None = None, level: int = STANDARD,
                      deadline: float | None = None, sheddable: bool = False) -> Slot:
        """`share`: this key's own cap on running sequences (at most the service's); `level`:
        its class (lower first); `deadline`: when it must have started, on the clock's scale
        (None: never too late); `sheddable`: start now or be refused, never wait."""
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
        now = self._now()
        waiter = _Waiter(Waiting(key, cost, level, now, None if deadline is None else deadline - self._epoch), share)
        self._refuse_if_late(waiter, now)
        self._queue.append(waiter)
        self._queued_by_key[key] += 1
        # _dispatch() starts whatever fits after every change: what fits now starts now.
        self._dispatch()
        if not waiter.future.done():
            self._refuse_beyond_the_bounds(waiter, sheddable)
        self._changed()
        if waiter.future.done():
            return self._slot(waiter.future.result())
        wait_s = self.max_wait_s
        if waiter.waiting.deadline is not None:
            wait_s = min(wait_s, max(0.0, waiter.waiting.deadline - self._now()))
        try:
            async with asyncio.timeout(wait_s):
                choice = await asyncio.shield(waiter.future)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                # Granted in the meantime, but nobody will use it: give it back.
                self._slot(waiter.future.result()).release()
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self._dequeued(waiter)
                self._dispatch()  # a big waiter leaving may let smaller ones in
                self._changed()
            if isinstance(exc, TimeoutError) and wait_s < self.max_wait_s:  # its deadline (dropped once)
                dropped = waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception()
                raise (dropped or self._late(waiter, self._now(), "queued")) from None
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"No capacity freed up within {self.max_wait_s:g} s; retry shortly.",
                    headers={"retry-after": "1"},
                ) from None
            raise
        return self._slot(choice)

    def _slot(self, choice: Choice) -> Slot:
        slot = Slot(self, choice, self._now())
        self.forecast.started(slot)
        return slot

    def _refuse_beyond_the_bounds(self, waiter: _Waiter, sheddable: bool = False) -> None:
        """A request that did not start may wait only within the queue's bounds (sheddable: none)."""
        error: Overloaded | RateLimited | None = None
        if sheddable:
            start = self._predicted_start(waiter, self._now())
            error = Overloaded("The server is at capacity and this key's requests do not wait; retry shortly.",
                               headers={"retry-after": retry_after(self._now(), start)})
        elif len(self._queue) > self.max_waiting:
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

    def _predicted_start(self, waiter: _Waiter, now: float) -> float | None:
        """When `waiter` would enter the engine's batch (forecast.py); None: unknown."""
        klass, number = self.ranking.engine_rank(waiter.waiting, Running(self._running_by_key,
                                                                          self._running_by_class), now)
        rank = (klass, self._engine_order.number(waiter.key, klass, number))
        return self.forecast.start(waiter.waiting, [w.waiting for w in self._queue], self._running_by_key,
                                   self.running, self._running_by_class, now, rank, self.ranking.class_cap(klass))

    def _refuse_if_late(self, waiter: _Waiter, now: float) -> None:
        """Refused at arrival rather than after waiting for nothing; without an estimate, never."""
        deadline = waiter.waiting.deadline
        if deadline is None:
            return
        start = self._predicted_start(waiter, now)
        if now >= deadline or start is not None and start > deadlines.latest_start(now, deadline):
            raise self._late(waiter, now, "arrival", start)

    def _late(self, waiter: _Waiter, now: float, when: str, start: float | None = None) -> Overloaded | RateLimited:
        self._on_deadline(when)
        if start is None and when == "queued":
            start = self._predicted_start(waiter, now)
        queued = [w.waiting for w in self._queue if w is not waiter]
        return deadlines.late_refusal(waiter.key, self._running_by_key, queued, retry_after(now, start))

    def _drop_expired(self, now: float) -> None:
        """Waiting requests whose deadline has passed leave the queue, refused."""
        for waiter in [w for w in self._queue if w.waiting.deadline is not None and now >= w.waiting.deadline]:
            self._queue.remove(waiter)
            self._dequeued(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(self._late(waiter, now, "queued"))

    def _release(self, slot: Slot) -> None:
        key, cost, klass = slot.key, slot.cost, slot.klass
        self.forecast.ended(slot, self._now(), self.running)
        self.running -= cost
        _decrement(self._running_by_class, klass, cost)
        _decrement(self._running_by_key, key, cost)
        if not self.running_for(key):
            self._engine_order.idle(key)
        self._dispatch()
        self._changed()

    def _dispatch(self) -> None:
        """Start every waiting request that fits, in the ranking's order: of each key, its
        earliest deadline first, else its oldest."""
        running = Running(self._running_by_key, self._running_by_class)
        while True:
            now = self._now()
            self._drop_expired(now)
            heads: dict[str, _Waiter] = {}
            for waiter in self._queue:  # each key's earliest deadline, else its oldest
                head = heads.setdefault(waiter.key, waiter)
                if earlier_deadline(waiter.waiting, head.waiting):
                    heads[waiter.key] = waiter
            ready = [waiter for waiter in heads.values() if self._fits(waiter)]
            choice = self.ranking.choose([waiter.waiting for waiter in ready], running, now) if ready else None
            if choice is None:
                return
            choice = self._engine_order.granted(choice)
            chosen = next(waiter for waiter in ready if waiter.waiting is choice.waiting)
            if chosen.waiting.deadline is not None and now > chosen.waiting.deadline:
                self._on_deadline("granted_late")  # never: _drop_expired ran at this `now`
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
