"""Each API's error dialect: how an error looks as a JSON body, and as the event that ends a
stream whose 200 has already gone out. The route table (components/core/routes.py) says
which dialect a path speaks; the error sender (components/core/responses.py) renders with it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from components.core.routes import DialectName, route

if TYPE_CHECKING:  # errors.py re-exports the renderers below under their older names
    from components.core.errors import ServiceError


class ErrorDialect:
    """An API's error shape. `sequence_number`: where in its stream the event falls (the
    Responses API numbers its events; the others ignore it)."""

    name: DialectName

    def body(self, error: ServiceError) -> dict[str, Any]:
        raise NotImplementedError

    def sse_event(self, error: ServiceError, sequence_number: int = 0) -> str:
        raise NotImplementedError

    def json(self, error: ServiceError) -> bytes:
        return json.dumps(self.body(error), ensure_ascii=False).encode()


class OpenAIDialect(ErrorDialect):
    """`{"error": {"message", "type", "param", "code"}}`; in a stream, that body as the last
    `data:` event, then `data: [DONE]`."""

    name: DialectName = "openai"

    def body(self, error: ServiceError) -> dict[str, Any]:
        return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}

    def sse_event(self, error: ServiceError, sequence_number: int = 0) -> str:
        return f"data: {json.dumps(self.body(error), ensure_ascii=False)}\n\ndata: [DONE]\n\n"


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 504: "timeout_error"}


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicDialect(ErrorDialect):
    """`{"type": "error", "error": {"type", "message"}}`, the type by status; in a stream, an
    `event: error` carrying that body."""

    name: DialectName = "anthropic"

    def body(self, error: ServiceError) -> dict[str, Any]:
        return anthropic_body(error.status, error.message)

    def sse_event(self, error: ServiceError, sequence_number: int = 0) -> str:
        return f"event: error\ndata: {json.dumps(self.body(error), ensure_ascii=False)}\n\n"


class ResponsesDialect(OpenAIDialect):
    """OpenAI's body; in a stream, the Responses API's numbered `error` event."""

    name: DialectName = "responses"

    def sse_event(self, error: ServiceError, sequence_number: int = 0) -> str:
        data = {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                "sequence_number": sequence_number}
        return f"event: error\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


OPENAI, ANTHROPIC, RESPONSES = OpenAIDialect(), AnthropicDialect(), ResponsesDialect()
DIALECTS: dict[DialectName, ErrorDialect] = {d.name: d for d in (OPENAI, ANTHROPIC, RESPONSES)}


def dialect_for(path: str) -> ErrorDialect:
    return DIALECTS[route(path).dialect]
