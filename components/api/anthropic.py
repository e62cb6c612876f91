"""The Anthropic Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`.

vLLM's own Anthropic layer converts the request into a chat completion and the chat
completion's output back (its internal API, pinned to vLLM 0.32; called only by the
adapter, components/vllm_adapter/anthropic_bridge.py); between the two, the request takes
the chat route's whole path: model aliases and allowlists, validation, token reservation,
admission, the engine call under one owner, usage and metrics. Errors on these routes take
Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`): inside a stream by
the adapter's `AnthropicStream`, everywhere else by the error sender in the dialect the
route table gives these paths (components/core/routes.py), refusals made before the app
(keys, rate limits, body limits) included.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request

from components.core.errors import render_anthropic_sse
from components.serving.generation import Dialect
from components.serving.validation import check_ranges
from components.vllm_adapter.anthropic_bridge import AnthropicBridge, AnthropicStream
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.vllm_bridge import OpenAIBridge


class Messages:
    """The Messages routes: vLLM's conversions (through the adapter) around a chat
    completion on the bridge's chat route."""

    def __init__(self, bridge: OpenAIBridge) -> None:
        self.vllm = AnthropicBridge(bridge)
        self.dialect = Dialect(body=self.render, stream_error=render_anthropic_sse, last_event="event: message_stop")

    async def to_chat(self, body: Any) -> BaseModel:
        """The chat completion request that `body` (a Messages request) means."""
        check_ranges(body)  # in Anthropic's names, before the conversion renames them
        return await self.vllm.to_chat(body)

    async def generate(self, chat_body: Any, raw_request: Request, call: EngineCall) -> BaseModel | AnthropicStream:
        """The `Call` of the Messages route: a chat completion whose stream is converted."""
        return await self.vllm.messages(chat_body, raw_request, call)

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
        return self.vllm.message(result)

    async def count_tokens(self, body: Any, raw_request: Request) -> dict[str, Any]:
        await self.to_chat(body)  # the conversion's errors as to_chat maps them (vLLM's: 500s)
        return await self.vllm.count_tokens(body, raw_request)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False
