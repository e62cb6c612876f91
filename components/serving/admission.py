"""Admission control, counted in engine sequences: at most `capacity` sequences in the
engine, at most `max_waiting` requests queued, a bounded wait, and an immediate 429/503
beyond that.

Per key: at most `running_per_key` sequences in the engine (more of its requests wait) and
at most `queued_per_key` requests waiting (429 beyond), so one key cannot take every queue
place. Whenever capacity frees up or a request arrives, waiting requests are started in
order of their priority class (interactive, standard, batch; a request waiting `aging_s`
while its key has nothing running rises one class, so none starves), then of their key's
running sequences (fewest first), oldest first within a key; any request that fits is
started, so a large request cannot hold back smaller ones while capacity sits idle. The batch class may hold at most
`low_share` of the capacity, so a request of a higher class finds room at once.

A hand-written queue: asyncio.Semaphore hides its waiters, cannot refuse at a bound, and
knows neither costs nor keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from components.core.errors import InvalidRequest, Overloaded, RateLimited, Unavailable

# Priority classes (components/edge/keys.py): lower runs first, as in vLLM's priority scheduling.
STANDARD, LOW = 5, 10


@dataclass(eq=False)
class _Waiter:
    key: str
    cost: int
    share: int
    priority: int = STANDARD
    since: float = field(default_factory=time.monotonic)
    # Set when it starts: its class then (aged), and the priority vLLM is to see.
    started_as: int = STANDARD
    engine_priority: int = 0
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Slot:
    """`cost` sequences running for one key; `release()` gives them back, once. `priority`:
    what vLLM's scheduler is to see (engine_priority()); `klass`: the class it started as."""

    def __init__(self, admission: Admission, waiter: _Waiter) -> None:
        self._admission: Admission | None = admission
        self.key = waiter.key
        self.cost = waiter.cost
        self.low = waiter.started_as >= LOW
        self.klass = waiter.started_as
        self.priority = waiter.engine_priority

    def release(self) -> None:
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self.key, self.cost, self.low)


class Admission:
    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        max_wait_s: float,
        running_per_key: int = 0,
        queued_per_key: int = 0,
        on_change: Callable[[int, int], None] | None = None,
        low_share: float = 1.0,
        aging_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int | None = None,
    ) -> None:
        self.capacity = capacity
        # The low (batch) class may hold this share of the engine's batch (`batch_size`,
        # MAX_NUM_SEQS; `capacity` adds vLLM's own queue): the rest of the batch stays free
        # for the classes above, so their requests start at once, not after a batch one.
        self.low_capacity = max(1, int((batch_size or capacity) * low_share))
        self.running_low = 0
        # Waiting this long raises a request one class (5): no class starves.
        self.aging_s = aging_s
        self._clock = clock
        # vLLM's priorities (engine_priority()): milliseconds since this epoch, a unit per
        # class step (1/5 of aging_s) and `max_wait_s` per sequence a key already runs.
        self._epoch = clock()
        self._class_ms = int(aging_s * 1000 / STANDARD) if aging_s else 10**9
        self._rank_ms = min(int(max_wait_s * 1000), 10**9)
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        # A share above capacity would let a request wait for room that never comes.
        self.running_per_key = min(running_per_key or capacity, capacity)
        self.queued_per_key = queued_per_key or max_waiting
        self.running = 0  # sequences in the engine
        self._running_by_key: dict[str, int] = defaultdict(int)
        self._queued_by_key: dict[str, int] = defaultdict(int)
        self._queue: deque[_Waiter] = deque()
        self._closed: Unavailable | None = None
        self._on_change = on_change or (lambda running, waiting: None)

    @property
    def waiting(self) -> int:
        return len(self._queue)

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

    def _changed(self) -> None:
        self._on_change(self.running, len(self._queue))

    def _dequeued(self, waiter: _Waiter) -> None:
        _decrement(self._queued_by_key, waiter.key, 1)

    async def acquire(self, key: str, cost: int = 1, share: int | None = None, priority: int = STANDARD) -> Slot:
        """`share`: this key's own cap on running sequences (at most the service's);
        `priority`: its class (lower first)."""
        if self._closed is not None:
            raise self._closed
        share = min(share or self.running_per_key, self.running_per_key)
        if cost > share:
            raise InvalidRequest(
                f"The request asks for {cost} sequences (n x prompts); at most {share} run at once "
                "for one key.", param="n", code="too_many_sequences",
            )
        if priority >= LOW and cost > self.low_capacity and not self.aging_s:
            # It could only start as a batch request, which it never fits as, nor ages out of.
            raise InvalidRequest(
                f"The request asks for {cost} sequences (n x prompts); the batch class runs at most "
                f"{self.low_capacity} at once.", param="n", code="too_many_sequences",
            )
        # After every change _dispatch() has started whatever fits, so a request that fits
        # now starts now; one that does not must find a place in the queue.
        if not self._fits_now(key, cost, share, priority >= LOW):
            if len(self._queue) >= self.max_waiting:
                raise Overloaded(
                    f"The server is at capacity ({self.capacity} sequences running, {self.max_waiting} queued); "
                    "retry shortly.", headers={"retry-after": "1"},
                )
            if self.queued_for(key) >= self.queued_per_key:
                raise RateLimited(
                    f"Too many queued requests for this key (at most {self.queued_per_key}); retry shortly.",
                    code="concurrency_limit_exceeded", headers={"retry-after": "1", "retry-after-ms": "1000"},
                )
        waiter = _Waiter(key, cost, share, priority, self._clock())
        self._queue.append(waiter)
        self._queued_by_key[key] += 1
        self._dispatch()
        self._changed()
        if waiter.future.done():
            return Slot(self, waiter)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await asyncio.shield(waiter.future)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                # Granted in the meantime, but nobody will use it: give it back.
                Slot(self, waiter).release()
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
        return Slot(self, waiter)

    def _fits_now(self, key: str, cost: int, share: int, low: bool) -> bool:
        return (self.running + cost <= self.capacity and self.running_for(key) + cost <= share
                and (not low or self.running_low + cost <= self.low_capacity))

    def _aged(self, waiter: _Waiter, now: float) -> int:
        """Its class, raised one step (5) per `aging_s` waited while its key has nothing
        running. Only such a key ages: aging is against starvation, and a key whose
        sequences run is not starving; were it to age, a busy key's old queued requests
        would outrank another key's fresh ones and defeat the fairness between keys."""
        if not self.aging_s or self.running_for(waiter.key):
            return waiter.priority
        return max(0, waiter.priority - STANDARD * int((now - waiter.since) / self.aging_s))

    def _rank(self, waiter: _Waiter, now: float) -> tuple[float, int, float]:
        """Class first (aged by its wait), then the key's running sequences, then age."""
        return self._aged(waiter, now), self.running_for(waiter.key), waiter.since

    def _release(self, key: str, cost: int, low: bool = False) -> None:
        self.running -= cost
        if low:
            self.running_low -= cost
        _decrement(self._running_by_key, key, cost)
        self._dispatch()
        self._changed()

    def _dispatch(self) -> None:
        """Start every waiting request that fits: keys with the fewest sequences running
        first, the oldest request of a key first."""
        while True:
            heads: dict[str, _Waiter] = {}
            for waiter in self._queue:
                heads.setdefault(waiter.key, waiter)
            now = self._clock()
            ready = [w for w in heads.values() if self._fits_now(w.key, w.cost, w.share, self._aged(w, now) >= LOW)]
            if not ready:
                return
            chosen = min(ready, key=lambda w: self._rank(w, now))
            self._queue.remove(chosen)
            self._dequeued(chosen)
            chosen.started_as = self._aged(chosen, now)
            # n x prompts engine requests share one priority: rank it as its last one.
            rank = self.running_for(chosen.key) + chosen.cost - 1
            chosen.engine_priority = engine_priority(int((chosen.since - self._epoch) * 1000), chosen.priority,
                                                     rank, self._class_ms, self._rank_ms)
            self.running += chosen.cost
            if chosen.started_as >= LOW:
                self.running_low += chosen.cost
            self._running_by_key[chosen.key] += chosen.cost
            chosen.future.set_result(None)


def engine_priority(arrived_ms: int, priority: int, rank: int, class_ms: int, rank_ms: int) -> int:
    """The priority vLLM's scheduler sees (lower first) for the requests that wait in its
    own queue (ENGINE_QUEUE_DEPTH): a virtual time, in ms, of when the request arrived, plus
    `class_ms` per step of its class (interactive 0, standard 5, batch 10) and `rank_ms` per
    sequence its key already had in the engine (`rank`). vLLM's queue never ages; this way
    a batch request there waits behind standard ones that arrived up to 5 `class_ms` (the
    fair queue's aging, PRIORITY_AGING_SECONDS) after it and no longer, and a busy key's
    request behind another key's that arrived up to `rank_ms` (the fair queue's bounded
    wait, QUEUE_TIMEOUT_SECONDS) per sequence later. Below 2**63: vLLM carries an int64."""
    return (max(0, arrived_ms) + min(max(priority, 0), 10_000) * class_ms
            + min(max(rank, 0), 10_000) * rank_ms)


def _decrement(counts: dict[str, int], key: str, by: int) -> None:
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
