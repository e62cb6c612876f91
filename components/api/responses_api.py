"""The OpenAI Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

vLLM's own Responses layer (through the bridge) renders the request and builds the answer
and its events; the request takes the chat route's whole path in between (validation,
token reservation, admission, one `Pass`, the breaker, usage and metrics).

vLLM keeps `previous_response_id` conversations in a dict in memory that is never evicted
and that other replicas cannot see, so it is never used: the service stores each response
itself, with the conversation that led to it, in Redis (shared by every replica) or in
memory, for RESPONSES_STORE_TTL_SECONDS, each key within its quota of the store
(components/edge/response_store.py); `metadata` is bounded as OpenAI bounds it.
A follow-up's input is the stored conversation plus its own input (instructions are not
carried over, as OpenAI documents), sent to vLLM as one plain request. Only the key that
created a response may read, continue or delete it; to any other it does not exist.
Response ids are the service's own (`resp_` + a random uuid), never the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from starlette.requests import Request

from components.core.context import request_context
from components.core.dialects import RESPONSES
from components.core.errors import InvalidRequest, NotFound, ServiceError, ServingFailure, Unavailable
from components.edge.response_store import Store
from components.serving.generation import Call, Dialect
from components.serving.validation import check_ranges
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.vllm_bridge import OpenAIBridge, to_service_error

logger = logging.getLogger(__name__)
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses usage in the chat shape that metrics, logs and the ledger read."""
    if usage is None:
        return None
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens}


# An error inside a Responses stream, as OpenAI sends it: the Responses dialect's.
render_responses_sse = RESPONSES.sse_event


Save = Callable[[Any], Awaitable[None]]


class ResponsesStream:
    """vLLM's Responses events as SSE. The final event's response is stored before it is
    sent, so that a follow-up sent on seeing it finds it (on any replica). `on_finished`:
    told at the final event, when the engine is done with the request."""

    def __init__(self, source: AsyncIterator[Any], complete: Save, on_finished: Callable[[], None]) -> None:
        self._source = source
        self._complete = complete
        self._on_finished = on_finished
        self._sequence = 0
        self.usage: dict[str, Any] | None = None
        self.error: ServiceError | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        try:
            async for event in self._source:
                kind = getattr(event, "type", "unknown")
                self._sequence = max(self._sequence, int(getattr(event, "sequence_number", 0) or 0) + 1)
                if kind == "error":
                    self.error = _event_error(event)
                    yield render_responses_sse(self.error, self._sequence)
                    return
                if kind in _FINAL_EVENTS:
                    self.usage = chat_usage(event.response.usage)
                    self._on_finished()
                    await self._complete(event.response)
                yield f"event: {kind}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"
        except Exception as exc:  # noqa: BLE001 - every engine fault ends the stream cleanly
            error = to_service_error(exc)
            if error.status < 500:
                # Nothing the client sent fails once the stream has begun: vLLM's own error
                # event failing its validation (a GenerationError) is a server fault.
                logger.error("responses stream failed: %s", exc)
                error = ServingFailure("The inference engine failed to process the request.")
            self.error = error
            yield render_responses_sse(self.error, self._sequence)

    async def aclose(self) -> None:
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()  # closing vLLM's generator aborts the engine request


def _event_error(event: Any) -> ServiceError:
    logger.error("responses stream failed: %s", getattr(event, "message", event))
    return ServingFailure("The inference engine failed to process the request.")


class Responses:
    def __init__(self, bridge: OpenAIBridge, store: Store, request_model: Any, max_record_bytes: int) -> None:
        """`max_record_bytes`: the largest conversation stored (MAX_REQUEST_BYTES: what a
        client could have sent as one request); a longer chain is answered, not stored."""
        self.bridge = bridge
        self.store = store
        self.request_model = request_model
        self.max_record_bytes = max_record_bytes
        self.dialect = Dialect(
            body=lambda result: result.model_dump(mode="json", by_alias=True),
            stream_error=render_responses_sse, last_event="event: response.completed",
            usage=lambda result: chat_usage(getattr(result, "usage", None)),
            # Sent before the engine has produced anything.
            ttft_skip=("event: response.created", "event: response.in_progress"),
        )

    async def find(self, response_id: str, owner: str) -> dict[str, Any]:
        record = await self.store.get(response_id)
        if record is None or record["owner"] != owner:
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        return record

    async def prepare(self, body: Any, owner: str) -> tuple[Any, Call]:
        """The request vLLM gets (the stored conversation prepended) and the route's Call."""
        # Before the stored conversation is merged: that round trip through JSON would turn a
        # NaN or an infinity into null, a field left unset.
        check_ranges(body)
        if body.background:
            # vLLM would run it in a task of its own, outside admission, limits and drain.
            raise InvalidRequest("Background responses are not supported by this service.", param="background",
                                 code="unsupported_parameter")
        _check_items(body.input)
        _check_metadata(body.metadata)
        previous = body.previous_response_id
        if previous is None:
            return body, partial(self.generate, previous=None)
        try:
            record = await self.find(previous, owner)
        except NotFound:
            raise NotFound(f"Previous response with id '{previous}' not found.",
                           param="previous_response_id") from None
        data = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
        data["input"] = [*record["context"], *_items(data["input"])]
        data.pop("previous_response_id")
        return self.request_model.model_validate(data), partial(self.generate, previous=previous)

    async def generate(self, body: Any, raw_request: Request, call: EngineCall,
                       previous: str | None) -> BaseModel | ResponsesStream:
        """The `Call` of the route: vLLM's answer (or stream), stored once it is final."""
        owner = request_context(raw_request.scope).tenant
        wanted = body.store is not False  # read before vLLM turns it off (its own store stays unused)
        context = _items(to_jsonable_python(body.input))

        async def complete(response: Any) -> None:
            response.previous_response_id = previous
            response.store = wanted and await self._save(owner, context, response)

        result = await self.bridge.responses(body, raw_request, call)
        if isinstance(result, BaseModel):
            await complete(result)
            return result
        return ResponsesStream(result, complete, call.on_finished)

    async def _save(self, owner: str, context: list[Any], response: Any) -> bool:
        """Whether `response` is now stored. A store that fails has logged it: the answer
        still goes out (never lost work) and a follow-up to it gets a 404."""
        if response.status == "failed":
            return False
        # vLLM's own follow-ups skip reasoning: so do ours.
        output = [item.model_dump(mode="json") for item in response.output if item.type != "reasoning"]
        response.store = True
        record = json.dumps({"owner": owner, "response": response.model_dump(mode="json", by_alias=True),
                             "context": [*context, *output]})
        if len(record) > self.max_record_bytes:
            logger.warning("response %s not stored: its conversation is %d bytes, over %d",
                           response.id, len(record), self.max_record_bytes)
            return False
        with contextlib.suppress(Unavailable):
            # False: larger than the key's quota, or pushed out at once by the store's cap.
            return await asyncio.shield(self.store.put(response.id, owner, record))
        return False


def _check_items(items: Any) -> None:
    """vLLM reads an assistant message's first content part's `text`, and fails with a 500
    on an empty list or a part without text (a refusal): a 400 here instead."""
    for index, item in enumerate(items if isinstance(items, list) else ()):
        get = item.get if isinstance(item, dict) else lambda name, i=item: getattr(i, name, None)
        content = get("content")
        if get("role") != "assistant" or isinstance(content, str):
            continue
        first = content[0] if isinstance(content, list) and content else None
        text = first.get("text") if isinstance(first, dict) else getattr(first, "text", None)
        if not isinstance(text, str):
            raise InvalidRequest("An assistant message's content must be text or begin with an output_text part.",
                                 param=f"input.{index}.content")


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's bounds (16 pairs, keys of at most 64 characters, values of 512): without
    them `metadata`, stored and never tokenized, is a cheap way to fill the store."""
    if not metadata:
        return
    if len(metadata) > METADATA_PAIRS:
        raise InvalidRequest(f"Invalid 'metadata': at most {METADATA_PAIRS} pairs are allowed, got {len(metadata)}.",
                             param="metadata")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise InvalidRequest(f"Invalid 'metadata': a key of {len(key)} characters; at most "
                                 f"{METADATA_KEY_CHARS} are allowed.", param="metadata")
        if len(value) > METADATA_VALUE_CHARS:
            raise InvalidRequest(f"Invalid 'metadata': a value of {len(value)} characters; at most "
                                 f"{METADATA_VALUE_CHARS} are allowed.", param="metadata")


def _items(value: Any) -> list[Any]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)
