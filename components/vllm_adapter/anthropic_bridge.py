"""vLLM's Anthropic Messages layer, used for its conversions only (internal API, pinned to
vLLM 0.32; the private names it relies on are entries of components/vllm_adapter/internals.py):
a Messages request into a chat completion request, the chat completion's answer and stream
back into Anthropic's message and events, and token counting. The generation itself is a
chat completion on the bridge (components/api/anthropic.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from components.core.errors import InvalidRequest, ServiceError, ServingFailure, render_anthropic_sse
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.internals import (
    COUNT_TOKENS,
    DISABLED_THINKING_EFFORT,
    FULL_CONVERTER,
    MERGE_INLINE_SYSTEM,
    STREAM_CONVERTER,
    TO_CHAT,
)
from components.vllm_adapter.streams import SHOW_ALL, Stream
from components.vllm_adapter.vllm_bridge import OpenAIBridge
from components.vllm_adapter.vllm_errors import to_service_error

if TYPE_CHECKING:
    from starlette.requests import Request

Convert = Callable[[AsyncIterator[str]], AsyncIterator[str]]


class AnthropicStream:
    """Our chat `Stream` (usage recorded, engine errors caught) turned into Anthropic's
    events by vLLM's converter. The converter reads usage from every chunk, so the inner
    stream shows it all, whatever an OpenAI client would have asked for."""

    def __init__(self, inner: Stream, convert: Convert) -> None:
        self._inner = inner
        self._convert = convert
        self._events_iter: AsyncGenerator[str, None] | None = None
        self._converter_error: ServiceError | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._inner.usage

    @property
    def error(self) -> ServiceError | None:
        return self._inner.error or self._converter_error

    def __aiter__(self) -> AsyncIterator[str]:
        self._events_iter = self._events()
        return self._events_iter

    async def _events(self) -> AsyncGenerator[str, None]:
        async for event in self._convert(self._chat_events()):
            if event.startswith("event: error"):
                # The converter failed on its own (it catches everything and says so in
                # an event of a type Anthropic does not have): an error, not a success.
                self._converter_error = ServingFailure("The answer could not be converted to Anthropic's events.")
                yield render_anthropic_sse(self._converter_error)
                return
            yield event
        if self._inner.error is not None:
            yield render_anthropic_sse(self._inner.error)

    async def _chat_events(self) -> AsyncIterator[str]:
        async for event in self._inner:
            if self._inner.error is not None:
                return  # sent in Anthropic's shape once the converter has ended
            yield event

    async def aclose(self) -> None:
        try:
            if self._events_iter is not None:
                await self._events_iter.aclose()
        finally:
            await self._inner.aclose()  # closing vLLM's generator aborts the engine request


class AnthropicBridge:
    def __init__(self, bridge: OpenAIBridge) -> None:
        self.bridge = bridge

    @property
    def handler(self) -> Any:
        return self.bridge.serving("anthropic_serving_messages", "does not support the Messages API")

    async def to_chat(self, body: Any) -> BaseModel:
        """The chat completion request that `body` (a Messages or count_tokens request) means."""
        handler = self.handler
        effort = "none"
        if body.thinking is not None and body.thinking.type == "disabled":
            effort = await DISABLED_THINKING_EFFORT.on(handler)()
        try:
            chat: BaseModel = TO_CHAT.on(handler)(body, merge_inline_system=MERGE_INLINE_SYSTEM.on(handler),
                                                  disabled_thinking_effort=effort)
        except Exception as exc:  # noqa: BLE001 - the conversion reads only the client's input
            error = to_service_error(exc)
            if error.status >= 500:
                # e.g. an AttributeError on a malformed block vLLM's schema lets through
                raise InvalidRequest(f"The request could not be converted to a chat: {type(exc).__name__}.",
                                     param="messages") from exc
            raise error from exc
        return chat

    async def messages(self, chat_body: Any, raw_request: Request, call: EngineCall) -> BaseModel | AnthropicStream:
        """A chat completion (finished: still in the chat shape, see `message`) or its
        stream converted to Anthropic's events."""
        result = await self.bridge.chat(chat_body, raw_request, _show_all_usage(call))
        if isinstance(result, Stream):
            return AnthropicStream(result, STREAM_CONVERTER.on(self.handler))
        return result

    def message(self, chat_result: BaseModel) -> dict[str, Any]:
        """A finished chat completion as Anthropic's message."""
        converted: BaseModel = FULL_CONVERTER.on(self.handler)(chat_result)
        return converted.model_dump(mode="json", exclude_none=True)

    async def count_tokens(self, body: Any, raw_request: Request) -> dict[str, Any]:
        result: BaseModel = await self.bridge.call(COUNT_TOKENS.on(self.handler), body, raw_request)
        return result.model_dump(mode="json", exclude_none=True)


def _show_all_usage(call: EngineCall) -> EngineCall:
    return replace(call, usage=SHOW_ALL)
