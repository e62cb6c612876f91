from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from components.vllm_hooks import CLASS_ARG, engine_class, install_class_tag, on_rendered, report_rendered


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


class Engine:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> Any:
        self.seen.append(dict(sampling_params.extra_args) if sampling_params.extra_args else None)
        return request_id


def test_every_engine_request_carries_the_class_it_was_admitted_as() -> None:
    engine = Engine()
    install_class_tag(engine)
    install_class_tag(engine)  # once only
    # A client's own vllm_xargs arrive in extra_args: they stay, except a class of its own.
    spoofed = SimpleNamespace(extra_args={CLASS_ARG: 0, "mine": 1})
    token = engine_class.set(10)
    try:
        assert engine.generate("p", spoofed, "r1", priority=3) == "r1"
        assert engine.generate("p", SimpleNamespace(extra_args=None), "r2") == "r2"
    finally:
        engine_class.reset(token)
    engine.generate("p", SimpleNamespace(extra_args={CLASS_ARG: 0}), "warm-up")  # no class set: none goes
    assert engine.seen == [{CLASS_ARG: 10, "mine": 1}, {CLASS_ARG: 10}, None]
