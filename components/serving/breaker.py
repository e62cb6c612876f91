"""Circuit breaker on the engine's failure rate (the resilience4j model).

Our own: the Python breaker libraries either lack asyncio or only count consecutive
failures. Closed: calls go through and their outcomes fill a sliding window of the last
`window` calls; when at least `min_calls` are in it and the failure rate reaches
`failure_rate`, it opens. Open: every call is refused for `open_seconds`. Half-open: up to
`half_open_calls` trial calls go through; one failure reopens it, that many successes close it.

Only engine-side faults count as failures; the caller decides what is one.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from components.core.errors import Unavailable
from components.core.settings import ResilienceSettings


class State(enum.IntEnum):
    # The values are those of the vllm_circuit_breaker_state gauge.
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        open_seconds: float = 30.0,
        half_open_calls: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.open_seconds = open_seconds
        self.half_open_calls = half_open_calls
        self._clock = clock
        self._on_change = on_change or (lambda state: None)
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._state = State.CLOSED
        self._opened_at = 0.0
        self._trials_started = 0
        self._trial_successes = 0
        self._forced_reason: str | None = None

    @classmethod
    def from_settings(cls, res: ResilienceSettings, on_change: Callable[[State], None]) -> CircuitBreaker:
        return cls(failure_rate=res.breaker_failure_rate / 100, window=res.breaker_window,
                   min_calls=res.breaker_min_calls, open_seconds=res.breaker_open_seconds,
                   half_open_calls=res.breaker_half_open_calls, on_change=on_change)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._forced_reason is None:
            if self._clock() - self._opened_at >= self.open_seconds:
                self._transition(State.HALF_OPEN)
        return self._state

    def _transition(self, state: State) -> None:
        self._state = state
        if state is State.OPEN:
            self._opened_at = self._clock()
        if state is State.HALF_OPEN:
            self._trials_started = self._trial_successes = 0
        if state is State.CLOSED:
            self._outcomes.clear()
        self._on_change(state)

    def retry_after(self) -> int:
        if self._forced_reason is not None:
            return 30
        return max(1, round(self.open_seconds - (self._clock() - self._opened_at)))

    def before_call(self) -> bool:
        """Raise 503 if the call may not go through; True when the call is a half-open trial."""
        state = self.state
        if state is State.CLOSED:
            return False
        if state is State.HALF_OPEN and self._trials_started < self.half_open_calls:
            self._trials_started += 1
            return True
        reason = self._forced_reason or "The inference engine is failing; the circuit breaker is open."
        raise Unavailable(reason, code="circuit_open", headers={"retry-after": str(self.retry_after())})

    def record(self, failure: bool, trial: bool) -> None:
        if self._state is State.HALF_OPEN and trial:
            if failure:
                self._transition(State.OPEN)
                return
            self._trial_successes += 1
            if self._trial_successes >= self.half_open_calls:
                self._transition(State.CLOSED)
            return
        if self._state is not State.CLOSED:
            return  # a call admitted before the breaker opened
        self._outcomes.append(failure)
        if len(self._outcomes) >= self.min_calls:
            rate = sum(self._outcomes) / len(self._outcomes)
            if rate >= self.failure_rate:
                self._transition(State.OPEN)

    def release_trial(self, trial: bool) -> None:
        """A trial call ended without an outcome (client disconnect): free its place."""
        if trial and self._state is State.HALF_OPEN:
            self._trials_started = max(0, self._trials_started - 1)

    def force_open(self, reason: str) -> None:
        """Open for good (the engine is dead and will not come back in this process)."""
        self._forced_reason = reason
        if self._state is not State.OPEN:
            self._transition(State.OPEN)
