"""A generation's way through the service: breaker, admission slot, time limit, and the
registry of in-flight requests that draining, timeouts and engine death act on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from components.admission import Admission, Slot
from components.breaker import CircuitBreaker
from components.errors import GenerationTimeout, ServiceError, Unavailable

logger = logging.getLogger(__name__)

Aborter = Callable[[Sequence[str]], Awaitable[None]]


class Pass:
    """One admitted generation. `finish()` must be called exactly once, however it ends."""

    def __init__(self, gate: Gate, engine_ids: Sequence[str], slot: Slot, trial: bool) -> None:
        self.gate = gate
        self.engine_ids = engine_ids
        self.slot = slot
        self.trial = trial
        # Set when we abort the request ourselves (timeout, drain); the response then
        # reports this error instead of vLLM's "abort" finish.
        self.abort_error: ServiceError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def abort(self, error: ServiceError) -> None:
        if self._done or self.abort_error is not None:
            return
        self.abort_error = error
        self.gate.spawn(self.gate.aborter(self.engine_ids))

    def finish(self, error: ServiceError | None = None, cancelled: bool = False) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self.slot.release()
        self.gate.inflight.discard(self)
        error = error or self.abort_error
        if error is not None:
            self.gate.on_error(error)
        breaker = self.gate.breaker
        if cancelled and error is None:
            breaker.release_trial(self.trial)  # a client disconnect says nothing of the engine
        else:
            breaker.record(failure=is_engine_fault(error), trial=self.trial)


def is_engine_fault(error: ServiceError | None) -> bool:
    """Engine dead, engine errors, timeouts, out-of-memory. Not the draining refusal,
    nor anything the client caused."""
    if error is None or error.status < 500:
        return False
    return error.code not in ("shutting_down", "server_overloaded", "circuit_open")


class Gate:
    def __init__(
        self,
        admission: Admission,
        breaker: CircuitBreaker,
        aborter: Aborter,
        request_timeout_s: float,
        on_error: Callable[[ServiceError], None] | None = None,
    ) -> None:
        self.on_error = on_error or (lambda error: None)
        self.admission = admission
        self.breaker = breaker
        self.aborter = aborter
        self.request_timeout_s = request_timeout_s
        self.inflight: set[Pass] = set()
        self.total = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def enter(self, engine_ids: Sequence[str]) -> Pass:
        """Breaker first (an open one refuses without queueing), then a slot."""
        trial = self.breaker.before_call()
        try:
            slot = await self.admission.acquire()
        except BaseException:
            self.breaker.release_trial(trial)
            raise
        ticket = Pass(self, engine_ids, slot, trial)
        self.inflight.add(ticket)
        self.total += 1
        if self.request_timeout_s > 0:
            timeout = GenerationTimeout(
                f"The generation exceeded the {self.request_timeout_s:g} s time limit and was aborted."
            )
            ticket._timer = asyncio.get_running_loop().call_later(self.request_timeout_s, ticket.abort, timeout)
        return ticket

    def abort_all(self, error: ServiceError) -> int:
        tickets = list(self.inflight)
        for ticket in tickets:
            ticket.abort(error)
        return len(tickets)

    async def drain(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Refuse new work, let in-flight work finish up to `timeout_s`, abort the rest.
        True when everything finished on its own."""
        self.admission.close("The server is shutting down; retry on another replica.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(poll_s)
        if not self.inflight:
            return True
        count = self.abort_all(
            Unavailable("The server shut down before the generation finished.", code="shutting_down")
        )
        logger.warning("graceful shutdown timeout: aborted %d in-flight request(s)", count)
        grace = loop.time() + 5
        while self.inflight and loop.time() < grace:
            await asyncio.sleep(poll_s)
        return False
