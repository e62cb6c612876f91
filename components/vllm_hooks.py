"""Hooks into vLLM 0.32's OpenAI serving layer (internal API, pinned): the strict context
check, the point where the prompts' exact token counts are known, and the priority class
each engine request carries. The bridge installs them and hands in vLLM's objects: this
module imports nothing of vLLM's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

# False while the service, not the client, chose max_tokens (MAX_TOKENS_LIMIT as a default):
# then a long prompt clamps it as vLLM does, instead of failing a request that asked nothing.
client_chose_max_tokens: ContextVar[bool] = ContextVar("client_chose_max_tokens", default=True)


# Set by the generation path around its call into the serving layer: the request's priority
# class as admitted, for the engine's scheduler (components/engine_scheduler.py), which reads
# it from the sampling parameters' `extra_args` under CLASS_ARG.
engine_class: ContextVar[int | None] = ContextVar("engine_class", default=None)
CLASS_ARG = "service_priority_class"


def install_class_tag(engine: Any) -> None:
    """Wrap the engine's `generate`, which every serving handler calls once per engine
    request while the generation path's context is current, so that each request carries
    its class. Set for every request, and removed when none is set (the warm-up): a
    client's own `vllm_xargs` can never choose a class."""
    original = engine.generate
    if hasattr(original, "__wrapped__"):
        return

    def generate(prompt: Any, sampling_params: Any, *args: Any, **kwargs: Any) -> Any:
        extra = dict(sampling_params.extra_args or {})
        klass = engine_class.get()
        if klass is None:
            extra.pop(CLASS_ARG, None)
        else:
            extra[CLASS_ARG] = klass
        sampling_params.extra_args = extra or None
        return original(prompt, sampling_params, *args, **kwargs)

    generate.__wrapped__ = original  # type: ignore[attr-defined]
    engine.generate = generate


def _reject_past_the_context(original: Any) -> Any:
    """vLLM's `get_max_tokens`, except that prompt + `max_tokens` beyond the context is an
    error (OpenAI's behaviour, and our README's promise) instead of a silent clamp."""

    def strict(max_model_len: int, max_tokens: int | None, input_length: int, *args: Any, **kwargs: Any) -> int:
        truncated = kwargs.get("truncate_prompt_tokens")
        if (
            max_tokens is not None
            and client_chose_max_tokens.get()
            and truncated is None
            and input_length + max_tokens > max_model_len
        ):
            raise ValueError(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{input_length + max_tokens} tokens ({input_length} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or of max_tokens."
            )
        return int(original(max_model_len, max_tokens, input_length, *args, **kwargs))

    strict.__wrapped__ = original  # type: ignore[attr-defined]
    return strict


def install_context_check(serving_modules: Iterable[Any]) -> None:
    # vLLM 0.32's chat and completion serving modules import `get_max_tokens` by name and
    # call it once per prompt, with the prompt's exact token count: the one place where the
    # length is known before the engine sees the request.
    for module in serving_modules:
        original = module.get_max_tokens
        if not hasattr(original, "__wrapped__"):
            module.get_max_tokens = _reject_past_the_context(original)


# Set by the generation path for a request with token limits: awaited with the exact prompt
# lengths and the context length once vLLM has rendered the prompts and before any reaches
# the engine (it may raise a ServiceError, which refuses the request).
on_rendered: ContextVar[Callable[[list[int], int], Awaitable[None]] | None] = ContextVar("on_rendered", default=None)


def report_rendered(handler: Any, method_name: str, error_type: type) -> None:
    """Wrap vLLM 0.32's `render_chat_request`/`render_completion_request` (prompts in a
    tuple or list) or the Responses handler's `_render_resolved_response_inputs` (one
    `engine_input`) of one handler: the only async point where the prompts' exact token
    counts (from the engine's own renderer and tokenizer) are known and nothing has reached
    the engine yet. `error_type`: vLLM's ErrorResponse, which a render returns instead of
    raising."""
    original = getattr(handler, method_name)
    if hasattr(original, "__wrapped__"):
        return

    async def render(request: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(request, *args, **kwargs)
        callback = on_rendered.get()
        if callback is not None and not isinstance(result, error_type):
            if hasattr(result, "engine_input"):
                inputs = [result.engine_input]
            else:
                inputs = result[1] if isinstance(result, tuple) else result
            await callback([handler._extract_prompt_len(each) for each in inputs], handler.model_config.max_model_len)
        return result

    render.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(handler, method_name, render)
