"""A generation's way through the service: breaker, admission slot, time limit, and the
registry of in-flight generations that draining, timeouts and engine death act on.

One owner per generation: `Gate.admit()` returns a `Pass`, an async context manager that
holds the admission slot, the breaker trial and the time limit and gives them back exactly
once: when the engine request is done (`engine_finished()`, or the `async with` block
exits) or when it is aborted (time limit, drain, engine death), whichever comes first,
whatever the HTTP side still has to write. An abort also interrupts the request's task, so
work not yet handed to the engine never starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from components.core.errors import ClientClosed, GenerationTimeout, ServiceError, ServingFailure, Unavailable
from components.core.priority import STANDARD
from components.serving.admission import Admission, Slot
from components.serving.breaker import CircuitBreaker
from components.serving.objectives import Objectives

logger = logging.getLogger(__name__)

Aborter = Callable[[Sequence[str]], Awaitable[None]]


class Pass:
    def __init__(self, gate: Gate, engine_ids: Sequence[str], slot: Slot, trial: bool,
                 interrupt: Callable[[ServiceError], None] | None = None) -> None:
        self.gate = gate
        self.engine_ids = engine_ids
        self.slot = slot
        self.trial = trial
        # Set when we abort the request ourselves (timeout, drain, stall); the response
        # then reports this error instead of vLLM's "abort" finish.
        self.abort_error: ServiceError | None = None
        self._error: ServiceError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        # Interrupts the task that runs this generation (see generation.py).
        self.interrupt: Callable[[ServiceError], None] = interrupt or (lambda error: None)

    async def __aenter__(self) -> Pass:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or self._error is not None:
            self._end(self.abort_error or self._error)
        elif isinstance(exc, ServiceError):
            self._end(exc)
        elif isinstance(exc, asyncio.CancelledError):
            self._end(self.abort_error or ClientClosed("The request was cancelled."))
        else:
            self._end(self.abort_error or ServingFailure("unexpected failure"))

    def record_error(self, error: ServiceError) -> None:
        """The engine request ended with `error` without raising it (an error event in a stream)."""
        self._error = error

    def engine_finished(self) -> None:
        """The engine is done with this request; what is left is writing it out, which the
        stall limit bounds. The sequences go back now, and the time limit stops."""
        self._end(self._error)

    def abort(self, error: ServiceError) -> None:
        """Stop the engine work now; the slot goes back at once, the response reports `error`."""
        if self._released:
            return
        self.abort_error = error
        self.gate.spawn(self.gate.aborter(self.engine_ids))
        self._end(error)
        self.interrupt(error)

    def _end(self, error: ServiceError | None) -> None:
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
        self.slot.release()
        self.gate.inflight.discard(self)
        if error is not None:
            self.gate.on_error(error)
        breaker = self.gate.breaker
        if error is None:
            breaker.record(failure=False, trial=self.trial)
        elif error.engine_fault:
            breaker.record(failure=True, trial=self.trial)
        else:
            # A time limit the client's lengths reached, a disconnect, a 4xx, a refusal:
            # nothing about the engine's health, neither a failure nor a success.
            breaker.release_trial(self.trial)


class Gate:
    def __init__(
        self,
        admission: Admission,
        breaker: CircuitBreaker,
        aborter: Aborter,
        request_timeout_s: float,
        on_error: Callable[[ServiceError], None] | None = None,
        objectives: Objectives | None = None,
        on_admitted: Callable[[float], None] | None = None,
    ) -> None:
        """`on_admitted`: told the seconds each started generation waited for its slot."""
        self.on_error = on_error or (lambda error: None)
        self.on_admitted = on_admitted or (lambda waited_s: None)
        # Deadlines, sheddable keys, the gateway's fairness id (components/serving/objectives.py).
        self.objectives = objectives or Objectives()
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

    async def admit(self, key: str, sequences: int, engine_ids: Sequence[str], share: int | None = None,
                    level: int = STANDARD, interrupt: Callable[[ServiceError], None] | None = None,
                    deadline: float | None = None, sheddable: bool = False) -> Pass:
        """Breaker first (an open one refuses without queueing), then a slot. `share`: the
        key's own cap on sequences running (keys file max_inflight); `level`: its priority class;
        `interrupt`: stops the task that runs the generation, when it is aborted; `deadline`,
        `sheddable`: see Admission.acquire."""
        trial = self.breaker.before_call()
        asked = time.monotonic()
        try:
            slot = await self.admission.acquire(key, sequences, share, level, deadline, sheddable)
        except BaseException:
            self.breaker.release_trial(trial)
            raise
        self.on_admitted(time.monotonic() - asked)
        ticket = Pass(self, engine_ids, slot, trial, interrupt)
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
        # The engine aborts are sent before the engine shuts down; the responses still send
        # their error event (uvicorn waits for open requests).
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        return False
