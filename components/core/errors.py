"""One error taxonomy: each error's status, OpenAI `type` and `code`. How it looks on the wire
is its API's dialect (components/core/dialects.py)."""

from __future__ import annotations

from typing import Any

from components.core.dialects import ANTHROPIC, OPENAI
from components.core.dialects import anthropic_body as anthropic_body  # its older home

# OpenAI's `type` values: 4xx caused by the caller are invalid_request_error (429 is
# `requests`, 401 `authentication_error` in the new API but invalid_request_error in the
# classic one that SDKs key on); 5xx are server_error.
INVALID = "invalid_request_error"
SERVER = "server_error"


class ServiceError(Exception):
    status: int = 500
    type: str = SERVER
    code: str | None = "internal_error"
    # A fault of the inference engine: the only outcome the circuit breaker counts as a
    # failure. Client-chosen limits, disconnects, refusals and every 4xx are not.
    engine_fault: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return OPENAI.body(self)


class InvalidRequest(ServiceError):
    status, type = 400, INVALID
    code: str | None = None


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(ServiceError):
    status, type, code = 401, INVALID, "invalid_api_key"


class NotFound(ServiceError):
    status, type, code = 404, INVALID, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PermissionDenied(ServiceError):
    status, type, code = 403, INVALID, "permission_denied"


class RequestTimeout(ServiceError):
    status, type, code = 408, INVALID, "request_timeout"


class HeadersTooLarge(ServiceError):
    status, type, code = 431, INVALID, "headers_too_large"


class ClientClosed(ServiceError):
    """The client went away before the answer (nginx's 499); recorded, never sent to anyone."""

    status, type, code = 499, INVALID, "client_closed_request"


class StreamStalled(ClientClosed):
    """The client read nothing for the stall limit: its connection is given up."""

    code = "stream_stalled"


class MethodNotAllowed(ServiceError):
    status, type, code = 405, INVALID, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, type, code = 413, INVALID, "request_too_large"


class RateLimited(ServiceError):
    status, type, code = 429, "requests", "rate_limit_exceeded"


class TokensLimited(RateLimited):
    """The key's tokens-per-minute window cannot hold this request (OpenAI's `tokens` 429)."""

    type = "tokens"


class QuotaExceeded(RateLimited):
    """The key's token budget for the period is spent (OpenAI's answer for a spent quota)."""

    type, code = "insufficient_quota", "insufficient_quota"


class NotImplementedFeature(ServiceError):
    status, type, code = 501, INVALID, "not_implemented"


class Overloaded(ServiceError):
    status, type, code = 503, SERVER, "server_overloaded"


class Unavailable(ServiceError):
    status, type, code = 503, SERVER, "service_unavailable"


class GenerationTimeout(ServiceError):
    status, type, code = 504, SERVER, "timeout"


class EngineFailure(ServiceError):
    status, type, code = 500, SERVER, "engine_error"
    engine_fault = True


class ServingFailure(ServiceError):
    """A 500 from vLLM's request-handling code (a bug a request's content can trigger, such
    as an IndexError formatting logprobs): not the engine's health, so the breaker ignores it."""

    status, type, code = 500, SERVER, "internal_error"


class EngineDead(Unavailable):
    code = "engine_dead"
    engine_fault = True


class EngineOutOfMemory(Unavailable):
    code = "out_of_memory"
    engine_fault = True


# The names the API modules render with; the dialects own the shapes.
render_json = OPENAI.json
render_sse = OPENAI.sse_event
render_anthropic_sse = ANTHROPIC.sse_event


_STATUS_CLASSES: dict[int, type[ServiceError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
    501: NotImplementedFeature,
    503: Unavailable,
    504: GenerationTimeout,
}

def from_status(status: int, message: str, param: str | None = None) -> ServiceError:
    """An error from a status and message produced elsewhere (vLLM's OpenAI layer, through
    the bridge, which knows its wording; Starlette)."""
    cls = _STATUS_CLASSES.get(status)
    if cls is not None:
        return cls(message, param=param)
    if 400 <= status < 500:
        return InvalidRequest(message, param=param, status=status)
    return ServingFailure(message, param=param, status=status)
