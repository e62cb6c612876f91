"""A generation request from validation to its last byte.

The route validates the request into a frozen `Generation` (components/serving/validation.py);
only that type reaches admission. `GenerationResponse` then admits it, reserves its tokens
once vLLM has counted the prompt, runs it in the engine and writes it out, under one `Pass`
(see lifecycle) that owns the slot until the engine request ends, and settles the tokens
once, however it ends. A client that disconnects is recorded as 499; one that stops
reading for STREAM_STALL_TIMEOUT_SECONDS loses its connection and its engine request.
Every path ends the ASGI call promptly with a response or a closed socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from components.core.context import RequestContext, request_context
from components.core.errors import ClientClosed, ServiceError, StreamStalled, render_sse
from components.core.request_fields import declared
from components.core.responses import send_error
from components.edge.ledger import Hold, Ledger, settle_quietly
from components.edge.tracing import span
from components.serving.interrupts import Interrupts, Writer
from components.serving.lifecycle import Gate, Pass
from components.serving.objectives import arrival
from components.serving.validation import Generation, requested_max_tokens, reservation
from components.vllm_adapter.delivery import Delivery
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.streams import EventStream

# A route's way into the engine: vLLM's request model, the request, this generation's
# engine call; a finished answer, or its events.
Call = Callable[[Any, Request, EngineCall], Awaitable[BaseModel | EventStream]]


@dataclass(frozen=True)
class Dialect:
    """How a route's answers look: a finished generation's body, and an error event inside
    a stream. OpenAI's by default; components/api/anthropic.py builds Anthropic's."""

    body: Callable[[Any], Any] = lambda result: result.model_dump(mode="json")
    stream_error: Callable[[ServiceError], str] = render_sse
    # The event that ends a stream whose usage is known: the tokens are settled there,
    # before the last byte, so that the key's next request sees its window as this left it.
    last_event: str = "data: [DONE]"
    # The usage of a finished generation, in the chat shape that metrics, logs and the ledger read.
    usage: Callable[[Any], dict[str, Any] | None] = lambda result: (
        result.usage.model_dump() if getattr(result, "usage", None) else None)
    # Events a stream sends before the engine has produced anything: not its first token.
    ttft_skip: tuple[str, ...] = ()


OPENAI = Dialect()


def charge(delivery: Delivery, reserved: int) -> int:
    """What a generation is charged: every token the engine produced for it (each prompt
    once, every choice's tokens, counted from the engine's token ids), however it ended; so
    never less than was delivered, and never more than was reserved. Nothing reached the
    engine (a refusal): nothing. A non-streaming request cut off before its one output: how
    far the engine got is not known, so the whole reservation."""
    return reserved if delivery.unknown else min(reserved, delivery.total)


def cache_salt(policy: Any) -> str | None:
    """The prefix-cache partition of a key's requests (`KeyPolicy.cache_scope`: its
    `cache_group`, or the key itself). A prefix cached in one partition is never a hit in
    another, so neither `cached_tokens` nor the time to first token tells a key what another
    sent. Keys off: one partition (one tenant)."""
    return None if policy is None else f"tenant:{policy.cache_scope}"


class GenerationResponse(Response):
    def __init__(
        self, generation: Generation, request: Request, call: Call, gate: Gate, stall_timeout_s: float,
        ledger: Ledger | None = None, dialect: Dialect = OPENAI,
    ) -> None:
        self.dialect = dialect
        self.generation = generation
        self.request = request
        self.call = call
        self.gate = gate
        self.stall_timeout_s = stall_timeout_s
        self.ledger = ledger
        self.background = None
        self._hold: Hold | None = None
        self._delivery = Delivery()
        # Resolved here, before the response starts: a bad x-slo-ttft-ms is the route's 400.
        ctx = request_context(request.scope)
        self.terms = gate.objectives.terms(request.headers, ctx.tenant, ctx.policy, generation.priority,
                                           arrival(ctx.started))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The token reservation, if any, is made once vLLM has counted the prompts
        (`EngineCall.reserve`) and is settled here, once, however the request ends."""
        ctx = request_context(scope)
        try:
            await self._run(ctx, receive, send)
        finally:
            if self._hold is not None:
                await settle_quietly(self._hold, self._used(self._hold))

    @property
    def _reserving(self) -> bool:
        return bool(self.generation.token_limits and self.ledger)

    async def _reserve(self, prompt_lengths: list[int], max_model_len: int) -> None:
        gen, body = self.generation, self.generation.body
        n = declared(body, "n") or 1
        amount = reservation(prompt_lengths, max_model_len, n, requested_max_tokens(body))
        if self.ledger is not None and gen.token_limits is not None:
            self._hold = await self.ledger.reserve(gen.key, amount, gen.token_limits)

    def _used(self, hold: Hold) -> int:
        return charge(self._delivery, hold.amount)

    async def _run(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        write = Writer(send, self.stall_timeout_s, ctx.wire_send)
        gen = self.generation
        try:
            async with Interrupts(receive, write) as interrupts:
                with span(ctx, "queue"):
                    ticket = await self.gate.admit(self.terms.key, gen.sequences, gen.engine_ids, gen.max_inflight,
                                                   gen.priority, interrupt=interrupts.interrupt,
                                                   deadline=self.terms.deadline, sheddable=self.terms.sheddable)
                async with ticket:
                    # How far it gets, for the queue's prediction of when places free up.
                    ticket.slot.track(self._delivery, requested_max_tokens(gen.body))
                    with span(ctx, "engine"):
                        result = await self.call(gen.body, self.request, self._engine_call(ticket, ctx))
                        if isinstance(result, BaseModel):
                            await self._respond(result, write, ctx)
                        else:
                            await self._stream(result, ticket, write, ctx)
        except ServiceError as error:
            await self._fail(error, write, ctx)

    def _engine_call(self, ticket: Pass, ctx: RequestContext) -> EngineCall:
        gen = self.generation
        return EngineCall(
            cache_salt=cache_salt(ctx.policy), priority_class=ticket.slot.klass,
            engine_priority=ticket.slot.engine_priority,
            reserve=self._reserve if self._reserving else None, delivery=self._delivery,
            client_chose_max_tokens=gen.client_chose_max_tokens, grammars=gen.grammars, usage=gen.usage_shown,
            on_finished=ticket.engine_finished,
        )

    async def _settle_now(self) -> None:
        """Settle as soon as the engine's count is known, before the last byte goes out: a
        client's next request then sees its window as this one left it."""
        if self._hold is not None:
            await settle_quietly(self._hold, self._used(self._hold))

    async def _respond(self, result: BaseModel, write: Writer, ctx: RequestContext) -> None:
        ctx.usage = self.dialect.usage(result)
        choices = getattr(result, "choices", None) or []
        ctx.finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
        ttft_ms = getattr(getattr(result, "metrics", None), "time_to_first_token_ms", None)
        ctx.ttft_s = ttft_ms / 1000 if ttft_ms is not None else None
        await self._settle_now()
        await write.json(json.dumps(self.dialect.body(result), ensure_ascii=False).encode())

    async def _stream(self, stream: EventStream, ticket: Pass, write: Writer, ctx: RequestContext) -> None:
        try:
            await write({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")],
            })
            first = True
            async for event in stream:
                if first and not (self.dialect.ttft_skip and event.startswith(self.dialect.ttft_skip)):
                    first = False
                    ctx.ttft_s = time.perf_counter() - ctx.started
                if event.startswith(self.dialect.last_event) and stream.usage is not None:
                    ctx.usage = stream.usage
                    await self._settle_now()
                await write({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await write({"type": "http.response.body", "body": b""})
        finally:
            if stream.error is not None:
                ticket.record_error(stream.error)
                ctx.record_error(stream.error)  # the stream wrote its error event
            ctx.usage = stream.usage
            # Closing vLLM's generator aborts the engine request if it is still running.
            await stream.aclose()

    async def _fail(self, error: ServiceError, write: Writer, ctx: RequestContext) -> None:
        ctx.record_error(error)  # also when nothing more can be sent (a stalled or gone client)
        if isinstance(error, ClientClosed):
            ctx.status = ClientClosed.status
        if isinstance(error, StreamStalled):
            return  # the socket is full: uvicorn closes the connection when we return
        try:
            if not write.started:
                # Also for a disconnected client (uvicorn drops it): a response start ends
                # every wrapper's wait, BentoML's timeout middleware included.
                await send_error(self.request.scope, write, error)
            elif not isinstance(error, ClientClosed):
                await write({"type": "http.response.body", "body": self.dialect.stream_error(error).encode()})
        except StreamStalled:
            return
