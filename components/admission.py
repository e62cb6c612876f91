"""Admission control, counted in engine sequences: at most `capacity` sequences in the
engine, at most `max_waiting` requests queued, at most `per_key` sequences (running and
queued) for one key, a bounded wait, and an immediate 429/503 beyond that.

Fair between keys: when capacity frees up, the waiting key with the fewest sequences
running goes first, so one key's backlog cannot hold back another key's requests.

A hand-written queue: asyncio.Semaphore hides its waiters, cannot refuse at a bound, and
knows neither costs nor keys.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from components.errors import InvalidRequest, Overloaded, RateLimited, Unavailable


@dataclass(eq=False)
class _Waiter:
    key: str
    cost: int
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Slot:
    """`cost` sequences held for one key; `release()` gives them back, once."""

    def __init__(self, admission: Admission, key: str, cost: int) -> None:
        self._admission: Admission | None = admission
        self.key = key
        self.cost = cost

    def release(self) -> None:
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self.key, self.cost)


class Admission:
    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        per_key: int = 0,
        max_wait_s: float = 0,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.per_key = per_key  # 0: no per-key cap
        self.max_wait_s = max_wait_s  # 0: wait as long as it takes
        self.running = 0  # sequences in the engine
        self._running_by_key: dict[str, int] = defaultdict(int)
        self._held_by_key: dict[str, int] = defaultdict(int)  # running + queued sequences
        self._queue: deque[_Waiter] = deque()
        self._closed_reason: str | None = None
        self._on_change = on_change or (lambda running, waiting: None)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def held(self, key: str) -> int:
        return self._held_by_key.get(key, 0)

    def close(self, reason: str) -> None:
        """Refuse new requests from now on (draining); queued ones are refused too."""
        self._closed_reason = reason
        while self._queue:
            waiter = self._queue.popleft()
            self._forget(waiter.key, waiter.cost)
            if not waiter.future.done():
                waiter.future.set_exception(self._closed())
        self._changed()

    def _closed(self) -> Unavailable:
        return Unavailable(self._closed_reason or "", code="shutting_down", headers={"retry-after": "5"})

    def _changed(self) -> None:
        self._on_change(self.running, len(self._queue))

    def _forget(self, key: str, cost: int) -> None:
        self._held_by_key[key] -= cost
        if self._held_by_key[key] <= 0:
            del self._held_by_key[key]

    def _grant(self, key: str, cost: int) -> None:
        self.running += cost
        self._running_by_key[key] += cost

    async def acquire(self, key: str, cost: int = 1) -> Slot:
        if self._closed_reason is not None:
            raise self._closed()
        if cost > self.capacity:
            raise InvalidRequest(
                f"The request asks for {cost} sequences (n x prompts); at most {self.capacity} run at once.",
                param="n", code="too_many_sequences",
            )
        if self.per_key and self.held(key) + cost > self.per_key:
            raise RateLimited(
                f"Too many concurrent requests for this key ({self.per_key} sequences at once); retry shortly.",
                code="concurrency_limit_exceeded", headers={"retry-after": "1", "retry-after-ms": "1000"},
            )
        if not self._queue and self.running + cost <= self.capacity:
            self._held_by_key[key] += cost
            self._grant(key, cost)
            self._changed()
            return Slot(self, key, cost)
        if len(self._queue) >= self.max_waiting:
            raise Overloaded(
                f"The server is at capacity ({self.capacity} sequences running, {self.max_waiting} queued); "
                "retry shortly.",
                headers={"retry-after": "1"},
            )
        waiter = _Waiter(key, cost)
        self._queue.append(waiter)
        self._held_by_key[key] += cost
        self._changed()
        try:
            async with asyncio.timeout(self.max_wait_s or None):
                await asyncio.shield(waiter.future)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                # Granted in the meantime, but nobody will use it: give it back.
                Slot(self, key, cost).release()
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self._forget(key, cost)
                self._changed()
                self._dispatch()  # a big waiter leaving may let smaller ones in
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"No capacity freed up within {self.max_wait_s:g} s; retry shortly.",
                    headers={"retry-after": "1"},
                ) from None
            raise
        return Slot(self, key, cost)

    def _release(self, key: str, cost: int) -> None:
        self.running -= cost
        self._running_by_key[key] -= cost
        if self._running_by_key[key] <= 0:
            del self._running_by_key[key]
        self._forget(key, cost)
        self._dispatch()
        self._changed()

    def _dispatch(self) -> None:
        """Hand free capacity to waiters: the key with the fewest sequences running first,
        the oldest request of that key first."""
        while self._queue:
            heads: dict[str, _Waiter] = {}
            for waiter in self._queue:
                heads.setdefault(waiter.key, waiter)
            chosen = min(heads.values(), key=lambda w: self._running_by_key.get(w.key, 0))
            if self.running + chosen.cost > self.capacity:
                return
            self._queue.remove(chosen)
            self._grant(chosen.key, chosen.cost)
            chosen.future.set_result(None)
