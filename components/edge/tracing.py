"""One trace per request, exported over OTLP when OTLP_TRACES_ENDPOINT is set; nothing at
all when it is not (no middleware, no spans: `span()` is a shared null context).

The front door's server span continues the client's W3C `traceparent` (or starts a trace),
and the request's `traceparent` header is rewritten to that span before anything else reads
it: vLLM's own request span (the engine, started with `--otlp-traces-endpoint`) and the
access log's `trace_id` then belong to the same trace, vLLM's span under ours. Inner spans
(`auth`, `rate_limit`, `queue`, `engine`) come from `span()`, with the tracer the
middleware put in the request's context (no module-level tracer).

Sampling: TRACES_SAMPLE_RATIO of traces. A trace we start is decided on its (random) trace
id; one a client continues, by a random draw whatever its parent says: a client chooses its
trace ids and flags, so neither may make every one of its requests traced. vLLM's span
follows our decision (the rewritten header carries it). The routes the route table marks
untraced (probes, /metrics) have no span.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import request_context
from components.core.routes import route as route_of

_NULL = contextlib.nullcontext()


class Tracing:
    """The tracer provider and its OTLP exporter (OTel's SDK: batching, retries, shutdown)."""

    def __init__(self, endpoint: str | None, sample_ratio: float, protocol: str = "grpc",
                 processor: Any = None) -> None:
        """`processor`: where spans go instead of the OTLP exporter (unit tests)."""
        self.provider: Any = None
        self.tracer: Any = None
        if not endpoint:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        coin = _coin(sample_ratio)
        self.provider = TracerProvider(
            sampler=ParentBased(root=TraceIdRatioBased(sample_ratio), remote_parent_sampled=coin,
                                remote_parent_not_sampled=coin),
            resource=Resource.create({"service.name": "llm-service"}),
        )
        self.provider.add_span_processor(processor or BatchSpanProcessor(_exporter(endpoint, protocol)))
        self.tracer = self.provider.get_tracer("llm-service")

    def shutdown(self) -> None:
        """Flush what is batched (bounded by the SDK's export timeout)."""
        if self.provider is not None:
            self.provider.shutdown()


def _coin(ratio: float) -> Any:
    """A sampler drawing at random: OTel's SDK has ratio samplers by trace id only."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class Coin(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            state = get_current_span(parent_context).get_span_context().trace_state
            if random.random() < ratio:  # noqa: S311 - a sampling draw, not a secret
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
            return SamplingResult(Decision.DROP, None, state)

        def get_description(self) -> str:
            return f"Coin{{{ratio}}}"

    return Coin()


def _exporter(endpoint: str, protocol: str) -> Any:
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    # Plain text unless the URL says https, as vLLM's exporter does (`host:port` would
    # otherwise read as a URL scheme and ask for TLS).
    return GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))


def span(ctx: Any, name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the request's (`ctx`: its RequestContext), or nothing when it is not
    traced."""
    return ctx.tracer.start_as_current_span(name) if ctx.tracer is not None else _NULL


class TraceMiddleware:
    """The request's server span; installed only when tracing is on."""

    passes_body_through = True

    def __init__(self, app: ASGIApp, tracer: Any, route: Any) -> None:
        from opentelemetry.propagate import extract, inject
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.app = app
        self.tracer = tracer
        self.route = route  # path -> bounded route label
        self._extract, self._inject = extract, inject
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_of(scope["path"]).traced:
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"traceparent", b"tracestate"):
                carrier.setdefault(name.decode("latin-1"), value.decode("latin-1"))  # the first one counts
        route = self.route(scope["path"])
        request_context(scope).tracer = self.tracer
        with self.tracer.start_as_current_span(f"{scope['method']} {route}", context=self._extract(carrier),
                                               kind=self._server) as server_span:
            server_span.set_attributes({"http.request.method": scope["method"], "http.route": route})
            scope["headers"] = list(_with_current_trace(scope["headers"], self._inject))

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    server_span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        server_span.set_status(self._status(self._error))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                ctx = request_context(scope)
                usage = ctx.usage or {}
                attributes = {"request.id": ctx.request_id, "llm.key_id": ctx.key_id, "llm.model": ctx.model,
                              "llm.prompt_tokens": usage.get("prompt_tokens"),
                              "llm.completion_tokens": usage.get("completion_tokens"), "error.type": ctx.error_type}
                server_span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def _with_current_trace(headers: list[tuple[bytes, bytes]], inject: Any) -> Iterator[tuple[bytes, bytes]]:
    current: dict[str, str] = {}
    inject(current)
    yield from ((k, v) for k, v in headers if k not in (b"traceparent", b"tracestate"))
    for name, value in current.items():
        yield name.encode("latin-1"), value.encode("latin-1")
