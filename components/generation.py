"""A generation request from validation to its last byte.

The route validates the request into a frozen `Generation` (model resolved, limits checked,
engine ids and sequence count known); only that type reaches admission. `GenerationResponse`
then admits it, runs it in the engine and writes it out, under one `Pass` (see lifecycle)
that owns the slot until the engine request ends. A client that disconnects is recorded as
499; one that stops reading for STREAM_STALL_TIMEOUT_SECONDS loses its connection and its
engine request. Every path ends the ASGI call promptly with a response or a closed socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from components.context import RequestContext, request_context
from components.errors import ClientClosed, InvalidRequest, ServiceError, StreamStalled, render_sse
from components.lifecycle import Gate, Pass
from components.responses import send_error
from components.settings import ApiSettings
from components.vllm_bridge import OpenAIBridge, Stream, client_chose_max_tokens, prompt_count, request_models

_, _, StreamOptions = request_models()
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
Call = Callable[[Any, Request], Awaitable[Any]]


@dataclass(frozen=True)
class Generation:
    body: Any  # vLLM's request model, model resolved and request_id set
    key: str  # the tenant that admission counts it against
    sequences: int  # engine sequences: n x prompts
    engine_ids: tuple[str, ...]
    stream: bool
    forward_usage: bool  # the client asked for the usage chunk
    client_chose_max_tokens: bool


def validate(body: Any, limits: ApiSettings, key: str) -> Generation:
    """Check what the engine would accept too late or not at all; raise InvalidRequest."""
    n = getattr(body, "n", None) or 1
    if n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n}.", param="n")
    if getattr(body, "use_beam_search", False):
        # vLLM runs beam search as engine requests of other names, out of reach of our
        # time limit, drain and abort: refused rather than left unbounded.
        raise InvalidRequest("Beam search is not supported by this service.", param="use_beam_search",
                             code="unsupported_parameter")
    messages = getattr(body, "messages", None)
    if messages is not None and len(messages) > limits.max_messages:
        raise InvalidRequest(f"At most {limits.max_messages} messages are allowed.", param="messages")
    for index, message in enumerate(messages or ()):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in _ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {sorted(_ROLES)}.", param=f"messages.{index}.role"
            )
    prompts = prompt_count(body)
    if prompts > limits.max_prompts:
        raise InvalidRequest(f"At most {limits.max_prompts} prompts are allowed in one request.", param="prompt")
    sequences = n * prompts  # admission refuses more than one key may run at once
    requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
    chose = requested is not None
    if limits.max_tokens_limit:
        if requested is not None and requested > limits.max_tokens_limit:
            raise InvalidRequest(f"max_tokens must be at most {limits.max_tokens_limit}.", param="max_tokens")
        if requested is None:
            body.max_tokens = limits.max_tokens_limit
    stop = getattr(body, "stop", None)
    if isinstance(stop, list) and len(stop) > limits.max_stop_sequences:
        raise InvalidRequest(f"At most {limits.max_stop_sequences} stop sequences are allowed.", param="stop")
    # Engine request ids must be unique; a client's X-Request-ID is a correlation id only.
    body.request_id = uuid.uuid4().hex
    stream = bool(getattr(body, "stream", False))
    forward_usage = True
    if stream:
        # Always ask vLLM for the usage chunk (exact token accounting); pass it on only if
        # the client asked for it.
        forward_usage = bool(body.stream_options and body.stream_options.include_usage)
        body.stream_options = StreamOptions(
            include_usage=True,
            continuous_usage_stats=bool(body.stream_options and body.stream_options.continuous_usage_stats),
        )
    return Generation(body, key, sequences, tuple(OpenAIBridge.engine_ids(body)), stream, forward_usage, chose)


class _Interrupts:
    """Interrupts the request's task (client gone, time limit, drain, engine death) and
    raises the reason instead of CancelledError. The generation's whole life runs inside,
    so an interrupt also stops work not yet handed to the engine, and closing vLLM's
    generators aborts whatever the engine already holds.
    """

    def __init__(self, receive: Receive, write: _Writer) -> None:
        self._receive = receive
        self._write = write
        self.reason: ServiceError | None = None

    async def __aenter__(self) -> _Interrupts:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("_Interrupts needs a running task")
        self._task = task
        self._watcher = asyncio.ensure_future(self._watch())
        return self

    def interrupt(self, reason: ServiceError) -> None:
        # After the last byte, uvicorn reports a disconnect for every request: not one.
        if self.reason is None and not self._write.complete:
            self.reason = reason
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.interrupt(ClientClosed("The client closed the connection."))
                return

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._watcher.cancel()
        if self.reason is not None:
            self._task.uncancel()
        if self._task.cancelling():
            # Cancelled from outside too (BentoML's timeout middleware has answered): stop,
            # whatever the block ended with (vLLM turns a cancelled non-streaming request
            # into its own 400).
            raise asyncio.CancelledError from None
        if self.reason is not None:
            raise self.reason from None


class _Writer:
    """`send` with a bound on how long the client may keep us waiting (a full socket)."""

    def __init__(self, send: Send, stall_timeout_s: float) -> None:
        self._send = send
        self._stall_timeout_s = stall_timeout_s
        self.started = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await self._send(message)
        except TimeoutError:
            raise StreamStalled(f"The client read nothing for {self._stall_timeout_s:g} s.") from None

    async def json(self, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self({"type": "http.response.start", "status": 200, "headers": headers})
        await self({"type": "http.response.body", "body": body})


class GenerationResponse(Response):
    def __init__(
        self, generation: Generation, request: Request, call: Call, gate: Gate, stall_timeout_s: float
    ) -> None:
        self.generation = generation
        self.request = request
        self.call = call
        self.gate = gate
        self.stall_timeout_s = stall_timeout_s
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = request_context(scope)
        write = _Writer(send, self.stall_timeout_s)
        gen = self.generation
        try:
            async with _Interrupts(receive, write) as interrupts:
                ticket = await self.gate.admit(gen.key, gen.sequences, gen.engine_ids)
                ticket.interrupt = interrupts.interrupt
                async with ticket:
                    chosen = client_chose_max_tokens.set(gen.client_chose_max_tokens)
                    try:
                        result = await self.call(gen.body, self.request)
                    finally:
                        client_chose_max_tokens.reset(chosen)
                    if gen.stream:
                        await self._stream(result, ticket, write, ctx)
                    else:
                        await self._respond(result, ticket, write, ctx)
        except ServiceError as error:
            await self._fail(error, write, ctx)

    async def _respond(self, result: Any, ticket: Pass, write: _Writer, ctx: RequestContext) -> None:
        ticket.engine_finished()
        ctx.usage = result.usage.model_dump() if getattr(result, "usage", None) else None
        choices = getattr(result, "choices", None) or []
        ctx.finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
        ttft_ms = getattr(getattr(result, "metrics", None), "time_to_first_token_ms", None)
        ctx.ttft_s = ttft_ms / 1000 if ttft_ms is not None else None
        await write.json(json.dumps(result.model_dump(mode="json"), ensure_ascii=False).encode())

    async def _stream(self, stream: Stream, ticket: Pass, write: _Writer, ctx: RequestContext) -> None:
        stream.forward_usage = self.generation.forward_usage
        stream.on_finished = ticket.engine_finished
        try:
            await write({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")],
            })
            first = True
            async for event in stream:
                if first:
                    first = False
                    ctx.ttft_s = time.perf_counter() - ctx.started
                await write({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await write({"type": "http.response.body", "body": b""})
        finally:
            if stream.error is not None:
                ticket.record_error(stream.error)
                ctx.error_type = stream.error.code
            ctx.usage = stream.usage
            # Closing vLLM's generator aborts the engine request if it is still running.
            await stream.aclose()

    async def _fail(self, error: ServiceError, write: _Writer, ctx: RequestContext) -> None:
        ctx.error_type = error.code
        if isinstance(error, ClientClosed):
            ctx.status = ClientClosed.status
        if isinstance(error, StreamStalled):
            return  # the socket is full: uvicorn closes the connection when we return
        try:
            if not write.started:
                # Also for a disconnected client (uvicorn drops it): a response start ends
                # every wrapper's wait, BentoML's timeout middleware included.
                await send_error(write, error)
            elif not isinstance(error, ClientClosed):
                await write({"type": "http.response.body", "body": render_sse(error).encode()})
        except StreamStalled:
            return
