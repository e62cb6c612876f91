from __future__ import annotations

import asyncio
from typing import Any

from components.core.context import request_context
from components.edge.middleware import RequestIdMiddleware


def run(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    asyncio.run(RequestIdMiddleware(app)(scope, receive, send))
    return seen, dict(sent[0]["headers"])


def test_valid_client_id_is_kept_and_hidden_from_downstream() -> None:
    scope, headers = run([(b"x-request-id", b"abc-1")])
    assert headers[b"x-request-id"] == b"abc-1"
    assert request_context(scope).request_id == "abc-1"
    assert all(name != b"x-request-id" for name, _ in scope["headers"])


def test_invalid_client_id_is_replaced() -> None:
    for bad in (b"a b", b"x" * 200, b"evil\r\ninjected", b""):
        _, headers = run([(b"x-request-id", bad)])
        assert headers[b"x-request-id"] != bad and len(headers[b"x-request-id"]) == 32


def test_headers_vllm_obeys_never_reach_it() -> None:
    """vLLM takes X-Vllm-Priority over the body's priority: a client would pick its class."""
    scope, _ = run([(b"x-vllm-priority", b"-1000"), (b"x-data-parallel-rank", b"3"), (b"accept", b"*/*")])
    assert scope["headers"] == [(b"accept", b"*/*")]
