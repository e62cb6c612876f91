"""The Anthropic Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`.

vLLM's own Anthropic layer converts the request into a chat completion and the chat
completion's output back (its internal API, pinned to vLLM 0.32; reached through the
bridge, which alone imports vLLM's serving layer, and used here by duck typing); between
the two, the request takes the chat route's whole path: model aliases and allowlists,
validation, token reservation, admission, the engine call under one owner, usage and
metrics. Errors on these routes take Anthropic's shape (`{"type": "error", "error":
{"type", "message"}}`): inside a stream here, everywhere else by
`anthropic_errors.AnthropicErrors` at the front door, so that refusals made before the app
(keys, rate limits, body limits) take it too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from components.core.errors import InvalidRequest, ServiceError, ServingFailure, render_anthropic_sse
from components.serving.generation import Dialect
from components.serving.validation import check_ranges
from components.vllm_adapter.vllm_bridge import OpenAIBridge, Stream, to_service_error


class AnthropicStream:
    """Our chat `Stream` (usage recorded, engine errors caught) turned into Anthropic's
    events by vLLM's converter. The converter reads usage from every chunk, so the inner
    stream keeps it whatever the route would do for an OpenAI client."""

    def __init__(self, inner: Stream, convert: Callable[[AsyncIterator[str]], AsyncIterator[str]]) -> None:
        self._inner = inner
        self._convert = convert
        self._events_iter: Any = None
        self._converter_error: ServiceError | None = None
        # Set by GenerationResponse for OpenAI clients; the inner stream ignores them here.
        self.forward_usage = True
        self.strip_continuous_usage = False

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._inner.usage

    @property
    def error(self) -> ServiceError | None:
        return self._inner.error or self._converter_error

    @property
    def on_finished(self) -> Callable[[], None]:
        return self._inner.on_finished

    @on_finished.setter
    def on_finished(self, callback: Callable[[], None]) -> None:
        self._inner.on_finished = callback

    def __aiter__(self) -> AsyncIterator[str]:
        self._events_iter = self._events()
        return self._events_iter  # type: ignore[no-any-return]

    async def _events(self) -> AsyncIterator[str]:
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


class Messages:
    """vLLM's Anthropic handler, used only for its conversions (and token counting): the
    generation itself is a chat completion on the bridge's chat route."""

    def __init__(self, bridge: OpenAIBridge) -> None:
        self.bridge = bridge
        self.dialect = Dialect(body=self.render, stream_error=render_anthropic_sse, last_event="event: message_stop")

    @property
    def handler(self) -> Any:
        return self.bridge.serving("anthropic_serving_messages", "does not support the Messages API")

    async def to_chat(self, body: Any) -> Any:
        """The chat completion request that `body` (a Messages request) means."""
        check_ranges(body)  # in Anthropic's names, before the conversion renames them
        handler = self.handler
        effort = "none"
        if body.thinking is not None and body.thinking.type == "disabled":
            effort = await handler._get_disabled_thinking_effort()
        try:
            return handler.to_chat_completion_request(
                body, merge_inline_system=handler._merge_inline_system, disabled_thinking_effort=effort)
        except Exception as exc:  # noqa: BLE001 - the conversion reads only the client's input
            error = to_service_error(exc)
            if error.status >= 500:
                # e.g. an AttributeError on a malformed block vLLM's schema lets through
                raise InvalidRequest(f"The request could not be converted to a chat: {type(exc).__name__}.",
                                     param="messages") from exc
            raise error from exc

    async def generate(self, chat_body: Any, raw_request: Request) -> Any:
        """The `Call` of the Messages route: a chat completion whose stream is converted."""
        result = await self.bridge.chat(chat_body, raw_request)
        if isinstance(result, Stream):
            return AnthropicStream(result, self.handler.message_stream_converter)
        return result

    def render(self, result: Any) -> dict[str, Any]:
        """A finished chat completion as Anthropic's message. A `tool_use` block's input
        must be a JSON object; a call whose arguments are not one (cut short by
        `max_tokens`, or a model not held to the schema without `strict`) would fail vLLM's
        converter and the whole answer with it, so its arguments come back as text."""
        message = result.choices[0].message
        calls = message.tool_calls or []
        valid = [call for call in calls if _is_object(call.function.arguments)]
        if len(valid) != len(calls):
            result = result.model_copy(deep=True)
            choice = result.choices[0]
            choice.message.content = "".join([choice.message.content or "",
                                              *(call.function.arguments for call in calls if call not in valid)])
            choice.message.tool_calls = valid
            if not valid and choice.finish_reason == "tool_calls":
                choice.finish_reason = "stop"  # else the stop reason says tool_use, with none to run
        return self.handler.messages_full_converter(result).model_dump(  # type: ignore[no-any-return]
            mode="json", exclude_none=True)

    async def count_tokens(self, body: Any, raw_request: Request) -> dict[str, Any]:
        await self.to_chat(body)  # the conversion's errors as to_chat maps them (vLLM's: 500s)
        result = await self.bridge.call(self.handler.count_tokens, body, raw_request)
        return result.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False
