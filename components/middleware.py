"""Pure ASGI middleware of the front door, and the one function that installs it in order."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    return state.get("request_id")


class RequestIdMiddleware:
    """Takes a valid X-Request-ID from the client or makes one, returns it on every response.

    The header is removed before the request goes on: vLLM would use it as the engine's
    request id, and two clients sending the same id must not collide in the engine.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        headers = []
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                supplied = value
            else:
                headers.append((name, value))
        if supplied is not None and _VALID_REQUEST_ID.match(supplied):
            request_id = supplied.decode()
        else:
            request_id = uuid.uuid4().hex
        scope = dict(scope, headers=headers)
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER],
                    (REQUEST_ID_HEADER, raw_id),
                ]
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_middleware(app: ASGIApp, **components: Any) -> ASGIApp:
    """The front door, outermost first: request id."""
    app = RequestIdMiddleware(app)
    return app
