"""Pure ASGI middleware of the front door: request ids, header and body limits, methods on
public paths, CORS. `front_door.py` puts them in order."""

from __future__ import annotations

import asyncio
import re
import uuid

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import request_context
from components.core.errors import (
    ClientClosed,
    HeadersTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
)
from components.core.responses import send_error

REQUEST_ID_HEADER = b"x-request-id"
_ENGINE_HEADERS = frozenset({b"x-vllm-priority", b"x-data-parallel-rank"})
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")
]
# What browsers may send: ours, plus every header the official OpenAI and Anthropic SDKs add
# (a preflight asking for one that is not listed fails, and the browser never sends the
# request).
CORS_ALLOW_HEADERS = [
    "authorization", "content-type", "x-api-key", "x-request-id", "openai-organization", "openai-project",
    "openai-beta", "idempotency-key", "traceparent", "tracestate", "baggage",
    "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-timeout",
    "x-stainless-async", "x-stainless-helper-method",
    "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
    "x-slo-ttft-ms",  # a client's tighter time-to-first-token objective (components/serving/objectives.py)
]
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
# Each header costs its name, its value and ": " + CRLF on the wire.
HEADER_OVERHEAD = 4


class RequestIdMiddleware:
    """Takes a valid X-Request-ID from the client or makes one, returns it on every response.

    The header is removed before the request goes on: vLLM would use it as the engine's
    request id, and two clients sending the same id must not collide in the engine. So are
    the other headers vLLM's serving layer obeys: `X-Vllm-Priority` would override the
    key's priority class, `X-data-parallel-rank` pick an engine.
    """

    passes_body_through = True

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
            elif name not in _ENGINE_HEADERS:
                headers.append((name, value))
        if supplied is not None and _VALID_REQUEST_ID.match(supplied):
            request_id = supplied.decode()
        else:
            request_id = uuid.uuid4().hex
        scope = dict(scope, headers=headers)
        request_context(scope).request_id = request_id
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER],
                    (REQUEST_ID_HEADER, raw_id),
                ]
            await send(message)

        await self.app(scope, receive, send_with_id)


class HeaderLimitMiddleware:
    """431 when the request's headers add up to more than `max_bytes`.

    X-Request-ID is not counted: RequestIdMiddleware, outside, has already taken it off.
    """

    passes_body_through = True

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + HEADER_OVERHEAD for name, value in scope["headers"])
            if size > self.max_bytes:
                await send_error(scope, send, HeadersTooLarge(f"The request headers exceed {self.max_bytes} bytes."))
                return
        await self.app(scope, receive, send)


class PublicMethodsMiddleware:
    """405 for anything but GET/HEAD on the public paths, with or without a key.

    They take no body, and since they need no key a POST there would otherwise have its
    body read by the body limit for anyone who asks.
    """

    passes_body_through = True

    def __init__(self, app: ASGIApp, public: frozenset[str]) -> None:
        self.app = app
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.public and scope["method"] not in READ_ONLY_METHODS:
            error = MethodNotAllowed(f"{scope['path']} answers GET and HEAD only.", headers={"allow": "GET, HEAD"})
            await send_error(scope, send, error)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`, by Content-Length or by counting a chunked body;
    408 when the whole body takes longer than `read_timeout_s` to come (a deadline for the
    body, not per chunk: a trickle of bytes cannot hold a connection).

    The body is read here, up to the limit, and replayed downstream: the routes need all of
    it anyway (JSON), and refusing before the app starts is the only clean way to 413.
    """

    passes_body_through = True

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(scope, send, too_large)
                return
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await self._refuse(scope, send, RequestTimeout(
                    f"The request body did not arrive within {self.read_timeout_s:g} s."), close=True)
                return
            if message["type"] != "http.request":
                # Something must still be sent: BentoML's TimeoutMiddleware, outside, waits
                # for a first send() and would hold the request for its whole timeout. The
                # server drops it on a closed connection; the access log records 499.
                await self._refuse(scope, send, ClientClosed("The client closed the connection during the body."))
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(scope, send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, error: ServiceError, close: bool = False) -> None:
        # The rest of a late body must not be read as the next request: close the connection.
        await send_error(scope, send, error, [(b"connection", b"close")] if close else None)


class Cors(CORSMiddleware):
    """Starlette's CORS, which adds headers to a response's start and sends its body on as it comes."""

    passes_body_through = True


def cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    allow_all = origins == ("*",)
    return Cors(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=["x-request-id", "retry-after", "retry-after-ms", *RATE_LIMIT_HEADERS],
        # Credentials never with "*": browsers would send cookies to any origin.
        allow_credentials=not allow_all,
        max_age=600,
    )
