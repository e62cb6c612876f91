"""The front door as `FrontDoor.build` assembles it (pure ASGI, a fake downstream app): a
200's body chunks come out byte for byte and in order through every layer, a layer that does
not declare it passes them through is refused, and refusals speak the route's dialect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp, Receive, Scope, Send

from components.core.metrics import Metrics
from components.core.settings import LimitSettings
from components.edge import front_door as front_door_module
from components.edge.front_door import FrontDoor
from components.edge.keys import Policy
from components.edge.keys_file import PolicySource
from components.edge.ratelimit import RateLimiter
from components.edge.tracing import Tracing

KEY = "sk-user-1111"
# Chunks a byte-level change would show: a split UTF-8 sequence, an empty chunk, CRLFs,
# bytes that are not UTF-8, a chunk that looks like an error body.
CHUNKS = [b"data: {\"a\": 1}\n\n", "é".encode()[:1], "é".encode()[1:], b"", b"\r\n\r\n", bytes(range(256)),
          b'{"error": {"message": "not one"}}', b"data: [DONE]\n\n"]


def streaming(chunks: list[bytes]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def every_layer(**options: Any) -> FrontDoor:
    """Keys, limits, CORS, access log, request metrics, tracing and health: every optional layer on."""
    tracing = Tracing("unused", 1.0, processor=SimpleSpanProcessor(InMemorySpanExporter()))
    return FrontDoor(
        keys=PolicySource(Policy.from_env((KEY,))), limiter=RateLimiter(LimitSettings()),
        cors_origins=("https://app.example.com",), max_request_bytes=1024, metrics=Metrics(), access_log=True,
        health=(lambda: {"status": "healthy"}, lambda: (True, "ready")), tracer=tracing.tracer, **options)


def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"application/json"), (b"origin", b"https://app.example.com"), *headers]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return sent


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_200s_chunks_pass_every_layer_byte_for_byte_and_in_order(path: str) -> None:
    sent = call(every_layer().build(streaming(CHUNKS)), path, [(b"authorization", f"Bearer {KEY}".encode())])
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = sent[1:]
    assert [m["type"] for m in bodies] == ["http.response.body"] * (len(CHUNKS) + 1)
    assert [m["body"] for m in bodies] == [*CHUNKS, b""]
    assert [m.get("more_body", False) for m in bodies] == [True] * len(CHUNKS) + [False]


def test_every_layer_declares_it_passes_bodies_through() -> None:
    app = every_layer().build(streaming([]))
    layers = []
    while app is not None and not getattr(app, "__name__", "") == "app":
        layers.append(type(app))
        app = getattr(app, "app", None)
    assert len(layers) >= 10 and all(layer.passes_body_through is True for layer in layers), layers


def test_a_layer_that_does_not_declare_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Buffering:  # joins a stream's chunks: what the declaration exists to rule out
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)

    monkeypatch.setattr(front_door_module, "RequestIdMiddleware", Buffering)
    with pytest.raises(TypeError, match="Buffering"):
        every_layer().build(streaming([]))


@pytest.mark.parametrize(("path", "anthropic"), [
    ("/v1/messages", True), ("/v1/messages/count_tokens", True), ("/v1/chat/completions", False),
    ("/v1/responses", False),
])
def test_refusals_speak_the_routes_dialect(path: str, anthropic: bool) -> None:
    app = every_layer().build(streaming([]))
    for headers, body, status, kind in (([], b"{}", 401, "authentication_error"),
                                        ([(b"authorization", f"Bearer {KEY}".encode())], b"x" * 2048, 413,
                                         "request_too_large")):
        start, answer = call(app, path, headers, body)
        assert start["status"] == status
        document = json.loads(answer["body"])
        if anthropic:
            assert document == {"type": "error", "error": {"type": kind, "message": document["error"]["message"]}}
        else:
            assert set(document["error"]) == {"message", "type", "param", "code"}
        assert dict(start["headers"])[b"content-length"] == str(len(answer["body"])).encode()
        assert dict(start["headers"])[b"access-control-allow-origin"] == b"https://app.example.com"
