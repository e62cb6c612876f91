"""The error sender: an error as the answer to a request, in its route's dialect (the route
table says which), recorded in the request's context as it goes out. Middleware calls
`send_error`; the app's exception handlers return an `ErrorResponse`, which sends the same way."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from components.core.context import request_context
from components.core.dialects import dialect_for
from components.core.errors import ServiceError


async def send_error(scope: Scope, send: Send, error: ServiceError,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    request_context(scope).record_error(error)
    body = dialect_for(scope.get("path", "")).json(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(k.lower().encode(), v.encode()) for k, v in error.headers.items()],
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorResponse(Response):
    """An exception handler's answer: the body is rendered when it is sent, in the dialect of
    the route it answers."""

    media_type = "application/json"

    def __init__(self, error: ServiceError) -> None:
        super().__init__(status_code=error.status, headers=error.headers)
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(scope, send, self.error)
