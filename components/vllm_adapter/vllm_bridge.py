"""The one place that touches vLLM's OpenAI serving layer (internal API, pinned to vLLM 0.32).

It turns vLLM's objects into ours: an `ErrorResponse` or a raised exception becomes a
`ServiceError`, an error event inside a stream becomes our SSE error event (the mapping
itself: components/vllm_adapter/vllm_errors.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.core.errors import InvalidRequest, ServiceError, from_status, render_sse
from components.core.request_fields import request_kind
from components.vllm_adapter.vllm_errors import error_from_event, from_error_info, to_service_error
from components.vllm_adapter.vllm_hooks import (
    install_context_check,
    install_engine_tags,
    install_grammar_reuse,
    report_rendered,
)

if TYPE_CHECKING:
    from argparse import Namespace

    from starlette.requests import Request
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# vLLM reports a failure inside a stream as an event of this form.
_ERROR_PREFIX = 'data: {"error"'
_USAGE_MARKER = '"usage":{'


def request_models() -> tuple[type, type, type]:
    """vLLM's pydantic request models, so that validation matches vLLM's own server."""
    from vllm.entrypoints.generate.base.protocol import StreamOptions
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return ChatCompletionRequest, CompletionRequest, StreamOptions


def api_models() -> tuple[type, type, type, Any, type]:
    """vLLM's request models of the other routes: Anthropic Messages and count_tokens
    (components/api/anthropic.py), Responses (components/api/responses_api.py), /tokenize
    (completion or chat form) and /detokenize."""
    from vllm.entrypoints.anthropic.protocol import AnthropicCountTokensRequest, AnthropicMessagesRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest

    return AnthropicMessagesRequest, AnthropicCountTokensRequest, ResponsesRequest, TokenizeRequest, DetokenizeRequest


def vllm_error_types() -> tuple[type[Exception], ...]:
    from vllm.exceptions import VLLMError

    return (VLLMError,)


@dataclass
class Stream:
    """An SSE stream from vLLM whose error events have been rewritten into our shape.

    It records the usage chunk (the routes always ask vLLM for one, for exact token
    accounting) and drops it when the client did not ask for it.
    """

    source: AsyncIterator[str]
    forward_usage: bool = True
    # The service asked for usage in every chunk (to charge a dropped stream what it
    # used); the client did not: taken out of the chunks it gets.
    strip_continuous_usage: bool = False
    usage: dict[str, Any] | None = None
    error: ServiceError | None = None
    # Called once the usage chunk arrives: vLLM sends it when every choice has finished,
    # so the engine is done with the request; only writing is left.
    on_finished: Callable[[], None] = lambda: None
    # Whether the engine reports itself dead: an error event is only text, and this typed
    # fact is what tells an EngineDeadError vLLM caught apart from any other 5xx.
    engine_dead: Callable[[], bool] = lambda: False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        try:
            async for event in self.source:
                if event.startswith(_ERROR_PREFIX):
                    self.error = error_from_event(event, self.engine_dead)
                    yield render_sse(self.error)
                    return
                if _USAGE_MARKER in event:
                    final, rewritten = self._take_usage(event)
                    if final:
                        self.on_finished()
                        if not self.forward_usage:
                            continue
                    elif rewritten is not None:
                        event = rewritten
                yield event
        except Exception as exc:  # noqa: BLE001 - every engine fault ends the stream cleanly
            self.error = to_service_error(exc)
            yield render_sse(self.error)

    def _take_usage(self, event: str) -> tuple[bool, str | None]:
        """(whether `event` is the final usage-only chunk, the event rewritten without its
        usage when that is to be stripped)."""
        try:
            chunk = json.loads(event[len("data: ") :])
        except ValueError:
            return False, None
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if bool(usage) and not chunk.get("choices"):
            return True, None
        if usage and self.strip_continuous_usage:
            del chunk["usage"]
            return False, f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"
        return False, None

    async def aclose(self) -> None:
        close = getattr(self.source, "aclose", None)
        if close is not None:
            await close()


def prompt_count(body: Any) -> int:
    """How many prompts a request carries: 1 for chat and Responses, the list's length for
    completions."""
    if request_kind(body) != "completion":
        return 1
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


class OpenAIBridge:
    def __init__(self, state: Any, served_name: str) -> None:
        self._state = state
        self.served_name = served_name

    @classmethod
    async def create(cls, engine: AsyncLLM, args: Namespace) -> OpenAIBridge:
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.openai.chat_completion import serving as chat_serving
        from vllm.entrypoints.openai.completion import serving as completion_serving
        from vllm.entrypoints.openai.responses import serving as responses_serving
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.v1.structured_output import backend_xgrammar

        install_context_check((chat_serving, completion_serving, responses_serving))
        install_engine_tags(engine)
        install_grammar_reuse(backend_xgrammar)
        state = State()
        tasks = await engine.get_supported_tasks()
        await init_app_state(engine, state, args, tasks)
        for handler, method in ((state.openai_serving_chat, "render_chat_request"),
                                (state.openai_serving_completion, "render_completion_request"),
                                (state.openai_serving_responses, "_render_resolved_response_inputs")):
            if handler is not None:
                report_rendered(handler, method, ErrorResponse)
        served = args.served_model_name[0] if args.served_model_name else args.model
        return cls(state, served)

    @staticmethod
    def engine_ids(body: Any) -> list[str]:
        """The ids vLLM's serving layer gives this request in the engine (to abort it)."""
        kind = request_kind(body)
        if kind == "chat":
            return [f"chatcmpl-{body.request_id}"]
        if kind == "responses":  # one engine turn: no built-in tool server here
            return [f"{body.request_id}_0"]
        return [f"cmpl-{body.request_id}-{index}" for index in range(prompt_count(body))]

    async def abort(self, engine_ids: Any) -> None:
        try:
            await self._state.engine_client.abort(list(engine_ids))
        except Exception:  # noqa: BLE001 - aborting a finished or dead request is not an error
            logger.debug("abort of %s failed", engine_ids, exc_info=True)

    async def chat(self, body: Any, raw_request: Request) -> Any:
        handler = self._state.openai_serving_chat
        if handler is None:
            raise from_status(501, "This model does not support chat completions.")
        return await self.call(handler.create_chat_completion, body, raw_request)

    async def completion(self, body: Any, raw_request: Request) -> Any:
        handler = self._state.openai_serving_completion
        if handler is None:
            raise from_status(501, "This model does not support completions.")
        return await self.call(handler.create_completion, body, raw_request)

    async def responses(self, body: Any, raw_request: Request) -> Any:
        """A finished response, or vLLM's generator of event models (components/api/responses_api.py)."""
        handler = self.serving("openai_serving_responses", "does not support the Responses API")
        return await self.call(handler.create_responses, body, raw_request, wrap=False)

    async def tokenize(self, body: Any, raw_request: Request) -> Any:
        return await self.call(self._tokenization().create_tokenize, body, raw_request)

    async def detokenize(self, body: Any, raw_request: Request) -> Any:
        handler = self._tokenization()
        vocabulary = len(handler.renderer.get_tokenizer())
        if any(token >= vocabulary for token in body.tokens):
            # The tokenizer would fail with an IndexError (a 500) on an id it does not have.
            raise InvalidRequest(f"Every token id must be below {vocabulary}, the tokenizer's vocabulary size.",
                                 param="tokens")
        return await self.call(handler.create_detokenize, body, raw_request)

    def _tokenization(self) -> Any:
        return self.serving("serving_tokenization", "has no tokenizer to expose")

    def serving(self, name: str, lacks: str) -> Any:
        """One of vLLM's serving handlers by its app-state name; 501 when the model has none."""
        handler = getattr(self._state, name, None)
        if handler is None:
            raise from_status(501, f"This model {lacks}.")
        return handler

    async def call(self, method: Any, body: Any, raw_request: Request, wrap: bool = True) -> Any:
        """A response model (pydantic), or a `Stream` (vLLM's generator if not `wrap`); raises
        ServiceError."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        try:
            result = await method(body, raw_request)
        except Exception as exc:  # noqa: BLE001 - mapped, never a bare 500
            raise to_service_error(exc) from exc
        if isinstance(result, ErrorResponse):
            raise from_error_info(result.error.code, result.error.message, result.error.param)
        if hasattr(result, "model_dump") or not wrap:
            return result
        return Stream(result, engine_dead=self.engine_dead)

    def engine_dead(self) -> bool:
        """Whether vLLM's engine client reports its engine core dead: set before it raises
        EngineDeadError into the requests' generators."""
        return bool(getattr(self._state.engine_client, "errored", False))
