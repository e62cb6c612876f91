"""Anthropic's shape on the Messages routes: an engine error inside a converted stream (pure
logic; refusals in Anthropic's shape: tests/unit/test_front_door.py; the real route is in
tests/integration/test_anthropic_api.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from components.vllm_adapter.anthropic_bridge import AnthropicStream
from components.vllm_adapter.streams import Stream


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

