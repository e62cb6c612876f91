"""The one place that touches vLLM's OpenAI serving layer (internal API, pinned to vLLM 0.32).

It turns vLLM's objects into ours: an `ErrorResponse` or a raised exception becomes a
`ServiceError`, an error event inside a stream becomes our SSE error event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.errors import (
    ContextLengthExceeded,
    EngineDead,
    EngineOutOfMemory,
    InvalidRequest,
    ModelNotFound,
    ServiceError,
    ServingFailure,
    from_status,
    render_sse,
)
from components.request_fields import request_kind
from components.vllm_hooks import install_context_check, install_engine_tags, report_rendered

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
    (components/anthropic.py), Responses (components/responses_api.py), /tokenize
    (completion or chat form) and /detokenize."""
    from vllm.entrypoints.anthropic.protocol import AnthropicCountTokensRequest, AnthropicMessagesRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest

    return AnthropicMessagesRequest, AnthropicCountTokensRequest, ResponsesRequest, TokenizeRequest, DetokenizeRequest


def vllm_error_types() -> tuple[type[Exception], ...]:
    from vllm.exceptions import VLLMError

    return (VLLMError,)


def to_service_error(exc: BaseException) -> ServiceError:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, EngineDeadError):
        return EngineDead("The inference engine is not running; retry later.")
    if isinstance(exc, EngineGenerateError):
        # vLLM wraps any exception inside generate() in this, input processing included:
        # what a request's content can trigger is not the engine's health.
        logger.error("engine failed a generation: %s", exc)
        return ServingFailure("The inference engine failed to process the request.")
    if is_out_of_memory(exc):
        return EngineOutOfMemory("The inference engine ran out of memory; retry later.")
    if not isinstance(exc, Exception):
        raise exc
    response = create_error_response(exc)
    return _from_error_info(response.error.code, response.error.message, response.error.param)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


# vLLM 0.32's wording for a prompt (plus max_tokens) beyond the context.
_CONTEXT_MARKERS = ("maximum context length", "context length", "max_model_len", "too long")


def _from_error_info(status: int, message: str, param: str | None) -> ServiceError:
    """Our error for one of vLLM's: the only place that reads vLLM's error wording."""
    lowered = message.lower()
    if status == 400 and any(marker in lowered for marker in _CONTEXT_MARKERS):
        return ContextLengthExceeded(message, param=param)
    if status == 404 and "model" in lowered:
        return ModelNotFound(message, param=param or "model")
    if status >= 500 and "out of memory" in lowered:
        logger.error("engine out of memory: %s", message)
        return EngineOutOfMemory("The inference engine ran out of memory; retry later.")
    if status >= 500 and ("enginecore encountered" in lowered or "engine dead" in lowered):
        logger.error("engine died: %s", message)
        return EngineDead("The inference engine is not running; retry later.")
    if status >= 500:
        # vLLM's messages for server faults can hold internals; keep them in the log only.
        # Not counted as an engine fault: a request's content can trigger these.
        logger.error("serving error %s: %s", status, message)
        message = "The inference engine failed to process the request."
    return from_status(int(status), message, param)


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

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        try:
            async for event in self.source:
                if event.startswith(_ERROR_PREFIX):
                    self.error = _error_from_event(event)
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


def _error_from_event(event: str) -> ServiceError:
    try:
        info = json.loads(event[len("data: ") :].split("\n", 1)[0])["error"]
        return _from_error_info(int(info.get("code") or 500), str(info.get("message")), info.get("param"))
    except (ValueError, KeyError, TypeError):
        return _from_error_info(500, "malformed error event from the engine", None)


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

        install_context_check((chat_serving, completion_serving, responses_serving))
        install_engine_tags(engine)
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
        """A finished response, or vLLM's generator of event models (components/responses_api.py)."""
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
            raise _from_error_info(result.error.code, result.error.message, result.error.param)
        if hasattr(result, "model_dump") or not wrap:
            return result
        return Stream(result)
