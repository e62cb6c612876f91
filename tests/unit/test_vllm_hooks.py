from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from components.vllm_hooks import on_rendered, report_rendered


class ErrorResponse:
    pass


class Handler:
    """vLLM 0.32's call shapes: chat/completion renders take the request and return the
    prompts (in a tuple for chat); the Responses handler's render also takes the previous
    response and returns one `engine_input`."""

    model_config = SimpleNamespace(max_model_len=4096)

    @staticmethod
    def _extract_prompt_len(engine_input: Any) -> int:
        return len(engine_input["prompt_token_ids"])

    async def render_chat_request(self, request: Any) -> Any:
        return ("conversation", [{"prompt_token_ids": [1, 2, 3]}])

    async def _render_resolved_response_inputs(self, request: Any, prev_response: Any, *,
                                               skip_mm_cache: bool = False) -> Any:
        return SimpleNamespace(messages=[], engine_input={"prompt_token_ids": [1] * 7})


def test_the_prompt_lengths_reach_the_callback_in_every_call_shape() -> None:
    handler = Handler()
    report_rendered(handler, "render_chat_request", ErrorResponse)
    report_rendered(handler, "_render_resolved_response_inputs", ErrorResponse)
    seen: list[tuple[list[int], int]] = []

    async def callback(lengths: list[int], max_model_len: int) -> None:
        seen.append((lengths, max_model_len))

    async def scenario() -> None:
        token = on_rendered.set(callback)
        try:
            await handler.render_chat_request("request")
            result = await handler._render_resolved_response_inputs("request", None)
            assert result.engine_input["prompt_token_ids"] == [1] * 7  # passed through untouched
        finally:
            on_rendered.reset(token)

    asyncio.run(scenario())
    assert seen == [([3], 4096), ([7], 4096)]
