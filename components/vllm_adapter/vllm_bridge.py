"""The one place that touches vLLM's OpenAI serving layer (internal API, pinned to vLLM 0.32;
each internal name it relies on is an entry of components/vllm_adapter/internals.py).

The service calls it with explicit, typed facts: each generation's `EngineCall`
(components/vllm_adapter/engine_call.py), current while vLLM handles the call and while its
stream is read (components/vllm_adapter/call_scope.py). It turns vLLM's objects into ours: an
`ErrorResponse` or a raised exception becomes a `ServiceError`, an error event inside a
stream becomes our SSE error event (the mapping itself: components/vllm_adapter/vllm_errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from components.core.errors import InvalidRequest, from_status
from components.core.request_fields import request_kind
from components.vllm_adapter import call_scope, internals
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.grammar_reuse import install_grammar_reuse
from components.vllm_adapter.streams import EventStream, Stream
from components.vllm_adapter.vllm_errors import from_error_info, to_service_error
from components.vllm_adapter.vllm_hooks import install_context_check, install_engine_tags, report_rendered

if TYPE_CHECKING:
    from argparse import Namespace

    from starlette.requests import Request
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["EventStream", "OpenAIBridge", "Stream", "api_models", "prompt_count", "request_models",
           "to_service_error", "vllm_error_types"]

logger = logging.getLogger(__name__)
Method = Callable[[Any, Any], Awaitable[Any]]


def request_models() -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """vLLM's pydantic request models, so that validation matches vLLM's own server."""
    from vllm.entrypoints.generate.base.protocol import StreamOptions
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return ChatCompletionRequest, CompletionRequest, StreamOptions


def api_models() -> tuple[type[BaseModel], type[BaseModel], type[BaseModel], Any, type[BaseModel]]:
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
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        install_context_check(internals.GET_MAX_TOKENS)
        install_engine_tags(engine)
        install_grammar_reuse()
        state = State()
        tasks = await engine.get_supported_tasks()
        await internals.INIT_APP_STATE.resolve()(engine, state, args, tasks)
        for name, render in internals.RENDERS.items():
            handler = getattr(state, name, None)
            if handler is not None:
                report_rendered(handler, render, ErrorResponse)
        served = args.served_model_name[0] if args.served_model_name else args.model
        return cls(state, str(served))

    @staticmethod
    def grammars_built(keys: frozenset[str]) -> None:
        """For the rest of the calling request: vLLM's request models, which FastAPI
        validates next, skip these builds (the grammar guard made them off the loop)."""
        call_scope.expect_built_grammars(keys)

    @staticmethod
    def engine_ids(body: Any) -> list[str]:
        """The ids vLLM's serving layer gives this request in the engine (to abort it)."""
        kind = request_kind(body)
        if kind == "chat":
            return [f"chatcmpl-{body.request_id}"]
        if kind == "responses":  # one engine turn: no built-in tool server here
            return [f"{body.request_id}_0"]
        return [f"cmpl-{body.request_id}-{index}" for index in range(prompt_count(body))]

    async def abort(self, engine_ids: Iterable[str]) -> None:
        try:
            await self._state.engine_client.abort(list(engine_ids))
        except Exception:  # noqa: BLE001 - aborting a finished or dead request is not an error
            logger.debug("abort of %s failed", engine_ids, exc_info=True)

    async def chat(self, body: Any, raw_request: Request, call: EngineCall) -> BaseModel | Stream:
        handler = self.serving("openai_serving_chat", "does not support chat completions")
        return self._stream(await self._generate(handler.create_chat_completion, body, raw_request, call), call)

    async def completion(self, body: Any, raw_request: Request, call: EngineCall) -> BaseModel | Stream:
        handler = self.serving("openai_serving_completion", "does not support completions")
        return self._stream(await self._generate(handler.create_completion, body, raw_request, call), call)

    async def responses(self, body: Any, raw_request: Request, call: EngineCall) -> BaseModel | AsyncIterator[Any]:
        """A finished response, or vLLM's event models (components/api/responses_api.py)."""
        handler = self.serving("openai_serving_responses", "does not support the Responses API")
        return await self._generate(handler.create_responses, body, raw_request, call)

    async def _generate(self, method: Method, body: Any, raw_request: Request,
                       call: EngineCall) -> BaseModel | AsyncIterator[Any]:
        """A finished answer (the engine is done: `call.on_finished` told), or vLLM's
        stream, read with `call` current; raises ServiceError. vLLM's scheduler sees the
        call's priority, whatever the body said."""
        body.priority = call.engine_priority
        with call_scope.engine_call(call):
            result = await self.call(method, body, raw_request)
        if isinstance(result, BaseModel):
            call.on_finished()
            return result
        return call_scope.Scoped(result, call)

    def _stream(self, result: BaseModel | AsyncIterator[Any], call: EngineCall) -> BaseModel | Stream:
        if isinstance(result, BaseModel):
            return result
        return Stream(result, call.usage, call.on_finished, self.engine_dead)

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

    async def call(self, method: Method, body: Any, raw_request: Request | None) -> Any:
        """A response model (pydantic) or vLLM's generator; raises ServiceError."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        try:
            result = await method(body, raw_request)
        except Exception as exc:  # noqa: BLE001 - mapped, never a bare 500
            raise to_service_error(exc) from exc
        if isinstance(result, ErrorResponse):
            raise from_error_info(result.error.code, result.error.message, result.error.param)
        return result

    def engine_dead(self) -> bool:
        """Whether vLLM's engine client reports its engine core dead: set before it raises
        EngineDeadError into the requests' generators."""
        return bool(getattr(self._state.engine_client, internals.ERRORED.name, False))
