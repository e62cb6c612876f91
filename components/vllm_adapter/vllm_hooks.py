"""Hooks into vLLM 0.32's OpenAI serving layer (internal API, pinned; each name patched or
called is an entry of components/vllm_adapter/internals.py): the strict context check, the
point where the prompts' exact token counts are known (the token reservation), and what
each engine request carries and reports: its priority class, its tenant's prefix-cache
salt, and the tokens the engine produced for it. Each reads the `EngineCall` current in the
request's context (components/vllm_adapter/call_scope.py). The bridge installs them and
hands in vLLM's objects: this module imports nothing of vLLM's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from components.core.priority import CLASS_ARG
from components.vllm_adapter import call_scope
from components.vllm_adapter.internals import EXTRACT_PROMPT_LEN, GENERATE, MODEL_CONFIG, Internal, patch

Generate = Callable[..., Any]


def install_engine_tags(engine: Any) -> None:
    """Wrap the engine's `generate`, which every serving handler calls once per engine
    request while the generation's `EngineCall` is current. The class and the cache salt
    are the service's, set for every request and removed when none is set (the warm-up):
    a client's own `vllm_xargs` or `cache_salt` can never choose them."""
    patch(GENERATE, _tagged, target=engine)


def _tagged(original: Generate) -> Generate:
    def generate(prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        call = call_scope.current()
        extra = dict(sampling_params.extra_args or {})
        extra.pop(CLASS_ARG, None)
        if call is not None and call.priority_class is not None:
            extra[CLASS_ARG] = call.priority_class
        sampling_params.extra_args = extra or None
        if isinstance(prompt, dict):
            prompt = {name: value for name, value in prompt.items() if name != "cache_salt"}
            if call is not None and call.cache_salt is not None:
                prompt["cache_salt"] = call.cache_salt
        outputs = original(prompt, sampling_params, request_id, *args, **kwargs)
        if call is None or call.delivery is None:
            return outputs
        prompt_len = len(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else 0
        delta = getattr(sampling_params.output_kind, "name", None) == "DELTA"
        return call.delivery.count(outputs, request_id, prompt_len, delta)

    return generate


def _reject_past_the_context(original: Callable[..., int]) -> Callable[..., int]:
    """vLLM's `get_max_tokens`, except that prompt + `max_tokens` beyond the context is an
    error (OpenAI's behaviour, and our README's promise) instead of a silent clamp, unless
    the service, not the client, chose max_tokens (MAX_TOKENS_LIMIT as a default): then a
    long prompt clamps it as vLLM does, instead of failing a request that asked nothing."""

    def strict(max_model_len: int, max_tokens: int | None, input_length: int, *args: Any, **kwargs: Any) -> int:
        call = call_scope.current()
        truncated = kwargs.get("truncate_prompt_tokens")
        if (
            max_tokens is not None
            and (call is None or call.client_chose_max_tokens)
            and truncated is None
            and input_length + max_tokens > max_model_len
        ):
            raise ValueError(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{input_length + max_tokens} tokens ({input_length} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or of max_tokens."
            )
        return int(original(max_model_len, max_tokens, input_length, *args, **kwargs))

    return strict


def install_context_check(checked: Iterable[Internal]) -> None:
    # vLLM 0.32's chat, completion and Responses serving modules import `get_max_tokens` by
    # name and call it once per prompt, with the prompt's exact token count: the one place
    # where the length is known before the engine sees the request.
    for internal in checked:
        patch(internal, _reject_past_the_context)


def report_rendered(handler: Any, render: Internal, error_type: type) -> None:
    """Wrap vLLM 0.32's `render_chat_request`/`render_completion_request` (prompts in a
    tuple or list) or the Responses handler's `_render_resolved_response_inputs` (one
    `engine_input`) of one handler: the only async point where the prompts' exact token
    counts (from the engine's own renderer and tokenizer) are known and nothing has reached
    the engine yet. There the current call's reservation is made. `error_type`: vLLM's
    ErrorResponse, which a render returns instead of raising."""

    def make(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def rendered(request: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(request, *args, **kwargs)
            call = call_scope.current()
            if call is not None and call.reserve is not None and not isinstance(result, error_type):
                if hasattr(result, "engine_input"):
                    inputs = [result.engine_input]
                else:
                    inputs = result[1] if isinstance(result, tuple) else result
                prompt_len = EXTRACT_PROMPT_LEN.on(handler)
                await call.reserve([prompt_len(each) for each in inputs], MODEL_CONFIG.on(handler).max_model_len)
            return result

        return rendered

    patch(render, make, target=handler)
