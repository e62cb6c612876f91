"""Anthropic's shape on the Messages routes: errors rewritten at the front door, and an
engine error inside a converted stream (pure logic; the real route is in
tests/integration/test_anthropic_api.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

from components.api.anthropic import AnthropicStream
from components.edge.anthropic_errors import AnthropicErrors
from components.core.errors import RateLimited, render_json
from components.core.responses import send_error
from components.vllm_adapter.vllm_bridge import Stream


def run(app, path: str) -> list[Message]:  # type: ignore[no-untyped-def]
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(AnthropicErrors(app)(scope, receive, send))
    return sent


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    await send_error(send, RateLimited("Rate limit exceeded.", headers={"retry-after": "1"}))


def test_an_error_on_the_messages_route_takes_anthropics_shape() -> None:
    start, body = run(refuse, "/v1/messages")
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1"
    assert json.loads(body["body"]) == {"type": "error",
                                        "error": {"type": "rate_limit_error", "message": "Rate limit exceeded."}}
    assert headers[b"content-length"] == str(len(body["body"])).encode()


def test_other_routes_and_successes_are_left_alone() -> None:
    start, body = run(refuse, "/v1/chat/completions")
    assert body["body"] == render_json(RateLimited("Rate limit exceeded."))

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"event: ping\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    assert [m.get("body") for m in run(stream, "/v1/messages")] == [None, b"event: ping\n\n", b""]


def test_an_engine_error_mid_stream_ends_it_with_an_anthropic_error_event() -> None:
    async def chat_events() -> AsyncIterator[str]:
        yield 'data: {"choices": []}\n\n'
        raise RuntimeError("engine gone")

    async def passthrough(events: AsyncIterator[str]) -> AsyncIterator[str]:
        async for event in events:
            yield f"converted {event}"

    async def collect() -> list[str]:
        stream = AnthropicStream(Stream(chat_events()), passthrough)
        events = [event async for event in stream]
        await stream.aclose()
        return events

    events = asyncio.run(collect())
    assert events[0].startswith("converted data:")
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert len(events) == 2  # the OpenAI-shaped error event never reaches the converter


def test_a_failure_of_the_converter_itself_is_an_error_not_a_success() -> None:
    async def chat_events() -> AsyncIterator[str]:
        yield 'data: {"choices": []}\n\n'

    async def failing(events: AsyncIterator[str]) -> AsyncIterator[str]:
        async for _ in events:
            yield 'event: error\ndata: {"type": "error", "error": {"type": "internal_error", "message": "x"}}\n\n'

    async def collect() -> tuple[list[str], AnthropicStream]:
        stream = AnthropicStream(Stream(chat_events()), failing)
        return [event async for event in stream], stream

    events, stream = asyncio.run(collect())
    assert stream.error is not None and stream.error.status == 500
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["type"] == "api_error"


def test_an_error_start_without_its_body_still_goes_out() -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})

    start, body = run(half, "/v1/messages")
    assert start["status"] == 400 and json.loads(body["body"])["error"]["type"] == "invalid_request_error"
