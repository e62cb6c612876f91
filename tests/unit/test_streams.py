"""components/vllm_adapter/streams.py: the OpenAI stream shows the client the usage it asked
for, whatever the service asked vLLM for, with every option given at construction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from components.vllm_adapter.engine_call import UsageShown
from components.vllm_adapter.streams import Stream

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def compact(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))  # as vLLM writes its chunks


async def vllm_events() -> AsyncIterator[str]:
    """What vLLM sends when the service asks for usage in every chunk and at the end."""
    for text in ("a", "b"):
        yield f"data: {compact({'choices': [{'delta': {'content': text}}], 'usage': USAGE})}\n\n"
    yield f"data: {compact({'choices': [], 'usage': USAGE})}\n\n"
    yield "data: [DONE]\n\n"


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("per_chunk", [True, False])
def test_the_client_sees_the_usage_it_asked_for_and_the_service_records_it(final: bool, per_chunk: bool) -> None:
    finished: list[int] = []

    async def read() -> tuple[list[str], Stream]:
        stream = Stream(vllm_events(), UsageShown(final=final, per_chunk=per_chunk), lambda: finished.append(1))
        events = [event async for event in stream]
        await stream.aclose()
        return events, stream

    events, stream = asyncio.run(read())
    chunks = [json.loads(event[len("data: "):]) for event in events if event != "data: [DONE]\n\n"]
    assert ["usage" in chunk for chunk in chunks if chunk["choices"]] == [per_chunk, per_chunk]
    assert len([chunk for chunk in chunks if not chunk["choices"]]) == int(final)
    assert events[-1] == "data: [DONE]\n\n"
    assert stream.usage == USAGE and stream.error is None
    assert finished == [1]  # the engine is done once the usage-only chunk arrives, shown or not
