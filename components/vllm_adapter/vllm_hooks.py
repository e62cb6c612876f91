"""Hooks into vLLM 0.32's OpenAI serving layer (internal API, pinned): the strict context
check, the point where the prompts' exact token counts are known, and what each engine
request carries and reports: its priority class, its tenant's prefix-cache salt, and the
tokens the engine produced for it; and vLLM's grammar validation, which skips the builds
the grammar guard already made off the loop for the same request. The bridge installs them
and hands in vLLM's objects: this module imports nothing of vLLM's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# False while the service, not the client, chose max_tokens (MAX_TOKENS_LIMIT as a default):
# then a long prompt clamps it as vLLM does, instead of failing a request that asked nothing.
client_chose_max_tokens: ContextVar[bool] = ContextVar("client_chose_max_tokens", default=True)


CLASS_ARG = "service_priority_class"


@dataclass(eq=False)
class Delivery:
    """What the engine produced for one generation, counted from its outputs' token ids
    (never from text): each engine request's prompt once, each choice's tokens. Nothing
    reaches a client that did not pass through here first, so charging this total never
    charges less than was delivered, however the request ends (components/serving/generation.py).
    `unknown`: an engine request that streams no deltas (non-streaming: one output at the
    end) was cut off before that output, so how far it got is not known."""

    prompt_tokens: dict[str, int] = field(default_factory=dict)
    choice_tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    unknown: bool = False

    @property
    def total(self) -> int:
        return sum(self.prompt_tokens.values()) + sum(self.choice_tokens.values())

    async def count(self, outputs: AsyncIterator[Any], request_id: str, prompt_len: int,
                    delta: bool) -> AsyncIterator[Any]:
        finished = cut = False
        try:
            async for output in outputs:
                self.prompt_tokens[request_id] = len(output.prompt_token_ids or ()) or prompt_len
                for choice in output.outputs:
                    slot = (request_id, choice.index)
                    tokens = len(choice.token_ids)
                    seen = self.choice_tokens.get(slot, 0)
                    self.choice_tokens[slot] = seen + tokens if delta else max(seen, tokens)
                finished = finished or output.finished
                yield output
        except (GeneratorExit, asyncio.CancelledError):
            cut = True
            raise
        finally:
            if cut and not finished:
                # Cut off (disconnect, time limit, drain): the engine may have read the
                # prompt already. An engine error instead charges only what came out.
                self.prompt_tokens[request_id] = max(self.prompt_tokens.get(request_id, 0), prompt_len)
                self.unknown = self.unknown or not delta
            # Closing this wrapper must close vLLM's generator now: that aborts the request.
            close = getattr(outputs, "aclose", None)
            if close is not None:
                await close()


@dataclass(frozen=True)
class EngineTags:
    """What the service attaches to every engine request of one generation: its priority
    class as admitted (for components/vllm_adapter/engine_scheduler.py), the prefix-cache salt of its
    tenant, and the `Delivery` that counts what the engine produces for it."""

    klass: int | None = None
    cache_salt: str | None = None
    delivery: Delivery | None = None


# Set by the generation path around its call into the serving layer (and while a stream is
# read): vLLM's handlers call the engine's `generate` in that context.
engine_tags: ContextVar[EngineTags | None] = ContextVar("engine_tags", default=None)


def install_engine_tags(engine: Any) -> None:
    """Wrap the engine's `generate`, which every serving handler calls once per engine
    request while the generation path's context is current. The class and the cache salt
    are the service's, set for every request and removed when none is set (the warm-up):
    a client's own `vllm_xargs` or `cache_salt` can never choose them."""
    original = engine.generate
    if hasattr(original, "__wrapped__"):
        return

    def generate(prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        tags = engine_tags.get() or EngineTags()
        extra = dict(sampling_params.extra_args or {})
        extra.pop(CLASS_ARG, None)
        if tags.klass is not None:
            extra[CLASS_ARG] = tags.klass
        sampling_params.extra_args = extra or None
        if isinstance(prompt, dict):
            prompt = {name: value for name, value in prompt.items() if name != "cache_salt"}
            if tags.cache_salt is not None:
                prompt["cache_salt"] = tags.cache_salt
        outputs = original(prompt, sampling_params, request_id, *args, **kwargs)
        if tags.delivery is None:
            return outputs
        prompt_len = len(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else 0
        delta = getattr(sampling_params.output_kind, "name", None) == "DELTA"
        return tags.delivery.count(outputs, request_id, prompt_len, delta)

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


# Set by components/serving/grammar_guard.py for the rest of a request: the keys (`grammar_key`) of
# the xgrammar builds its worker completed for this request's grammars within the limit.
built_grammars: ContextVar[frozenset[str]] = ContextVar("built_grammars", default=frozenset())

# xgrammar's builders that vLLM 0.32's `validate_xgrammar_grammar` calls, by the kind of
# source each takes (the guard's worker names its builds the same way).
_BUILDERS = {"from_json_schema": "json", "from_regex": "regex", "from_ebnf": "ebnf", "from_lark": "lark"}


def grammar_key(kind: str, source: Any) -> str | None:
    """The key of one xgrammar build: its builder's kind and its exact source (a JSON
    schema as compact JSON, keys in their order: the build depends on that order). None
    for a source that is not one such build can take."""
    if kind == "json":
        try:
            source = json.dumps(json.loads(source) if isinstance(source, str) else source, separators=(",", ":"))
        except (TypeError, ValueError):
            return None
    elif not isinstance(source, str):
        return None
    return hashlib.sha256(f"{kind}\0{source}".encode()).hexdigest()


class _Grammar:
    """xgrammar's `Grammar` as vLLM's validation sees it: a build that the guard already
    completed for this request returns at once (validation discards what a build returns),
    every other attribute and build is xgrammar's own."""

    def __init__(self, grammar: Any) -> None:
        self._grammar = grammar

    def __getattr__(self, name: str) -> Any:
        original = getattr(self._grammar, name)
        kind = _BUILDERS.get(name)
        if kind is None:
            return original
        # Read here, on the caller's thread: vLLM runs the regex build in a thread of its own,
        # which does not carry the request's context.
        built = built_grammars.get()

        def build(source: Any, *args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs and grammar_key(kind, source) in built:
                return None
            return original(source, *args, **kwargs)

        return build


class _Xgrammar:
    def __init__(self, module: Any) -> None:
        self._module = module
        self.Grammar = _Grammar(module.Grammar)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def install_grammar_reuse(backend_xgrammar: Any) -> None:
    """vLLM 0.32 validates a request's grammar by building it with xgrammar, synchronously
    on the API event loop, in `validate_xgrammar_grammar` (called by
    `SamplingParams._validate_structured_outputs` from `InputProcessor.process_inputs` for
    the xgrammar and `auto` backends, and by the request models' structural-tag
    validators; each imports it from its module at call time). The guard has already built
    this request's grammars off the loop under the time limit, with the same builders and
    default options: the same function runs, with its own code and checks (nesting depth,
    features xgrammar lacks, NUL bytes, `choice` rewritten to a grammar, its errors), and
    only the builds the guard completed for this request are skipped. Any other build
    (another backend, a source vLLM rewrote) is vLLM's own, as before."""
    original = backend_xgrammar.validate_xgrammar_grammar
    if hasattr(original, "__wrapped__"):
        return
    names = dict(original.__globals__)
    names["xgr"] = _Xgrammar(names["xgr"])
    validate = types.FunctionType(original.__code__, names, original.__name__, original.__defaults__,
                                  original.__closure__)
    validate.__kwdefaults__ = original.__kwdefaults__
    validate.__doc__ = original.__doc__
    validate.__wrapped__ = original  # type: ignore[attr-defined]
    backend_xgrammar.validate_xgrammar_grammar = validate
