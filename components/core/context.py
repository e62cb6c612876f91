"""What one HTTP request carries through the front door and the routes: a typed record
instead of string keys in the ASGI scope. Imports nothing of ours."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# The one key this service uses in the ASGI scope's `state` dict (Starlette's Request.state).
_KEY = "llm_service"


@dataclass
class RequestContext:
    started: float = field(default_factory=time.perf_counter)  # when the front door saw it
    request_id: str | None = None
    key_id: str | None = None  # the API key's id (never the key), once authenticated
    policy: Any = None  # the key's KeyPolicy (components/edge/keys.py), once authenticated
    model: str | None = None  # as requested
    stream: bool | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None
    error_type: str | None = None
    # The status to record when it differs from what went on the wire (499: the client left
    # after a 200 began).
    status: int | None = None
    tracer: Any = None  # components/edge/tracing.py: set by its middleware when tracing is on
    # The ASGI `send` below every middleware (set by the outermost one, components/
    # bentoml_metrics.py): a stream's middle chunks go straight to it (components/serving/interrupts.py).
    wire_send: Any = None

    def record_error(self, error: Any) -> None:
        """What the access log and the trace name the request's failure: the error's code, or
        its type when it has none. Called by whatever sends the error (components/core/
        responses.py, the stream writer), never set by hand next to a send."""
        self.error_type = error.code or error.type

    @property
    def tenant(self) -> str:
        """Whom admission counts the request against."""
        return self.key_id or "anonymous"


def request_context(scope: Any) -> RequestContext:
    """The request's context: created by the outermost middleware, found by the others."""
    state = scope.setdefault("state", {})
    context = state.get(_KEY)
    if context is None:
        context = state[_KEY] = RequestContext()
    return context
