"""Admission control: at most `max_running` requests in the engine, `max_waiting` queued,
and an immediate 503 beyond that. Nothing waits without bound.

A hand-written queue: asyncio.Semaphore hides its waiter count and cannot refuse at a bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from components.errors import Overloaded, Unavailable


class Slot:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class Admission:
    def __init__(self, max_running: int, max_waiting: int, on_change: Callable[[int, int], None] | None = None) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed_reason: str | None = None
        self._on_change = on_change or (lambda running, waiting: None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def close(self, reason: str) -> None:
        """Refuse new requests from now on (draining); queued ones are refused too."""
        self._closed_reason = reason
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable(reason, code="shutting_down", headers={"retry-after": "5"}))
        self._changed()

    def _changed(self) -> None:
        self._on_change(self.running, len(self._waiters))

    async def acquire(self) -> Slot:
        if self._closed_reason is not None:
            raise Unavailable(self._closed_reason, code="shutting_down", headers={"retry-after": "5"})
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            self._changed()
            return Slot(self._release)
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded(
                f"The server is at capacity ({self.max_running} running, {self.max_waiting} queued); retry shortly.",
                headers={"retry-after": "1"},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            await waiter
        except asyncio.CancelledError:
            # The client went away while queued. If the slot was handed over in the
            # meantime, pass it on; else just leave the queue.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
                self._changed()
            raise
        return Slot(self._release)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter; running is unchanged
                self._changed()
                return
        self.running -= 1
        self._changed()
