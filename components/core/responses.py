"""Sending an error straight from ASGI middleware, in the same shape as the app's errors."""

from __future__ import annotations

from starlette.types import Send

from components.core.errors import ServiceError, render_json


async def send_error(send: Send, error: ServiceError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = render_json(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(k.lower().encode(), v.encode()) for k, v in error.headers.items()],
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
