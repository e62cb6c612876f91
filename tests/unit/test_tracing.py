from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from components.edge import tracing
from components.core.context import RequestContext, request_context
from components.edge.tracing import TraceMiddleware, Tracing

SAMPLED_PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def ok(scope, receive, send):  # type: ignore[no-untyped-def]
    with tracing.span(request_context(scope), "inner"):
        seen.append(dict(scope["headers"]).get(b"traceparent"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


seen: list[bytes | None] = []


def traced(ratio: float) -> tuple[InMemorySpanExporter, TraceMiddleware, Tracing]:
    exporter = InMemorySpanExporter()
    setup = Tracing("unused", ratio, processor=SimpleSpanProcessor(exporter))
    return exporter, TraceMiddleware(ok, setup.tracer, lambda path: path), setup


def call(app: TraceMiddleware, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    async def send(message):  # type: ignore[no-untyped-def]
        pass

    asyncio.run(app(scope, receive, send))


def test_a_client_cannot_make_its_requests_traced_by_saying_sampled() -> None:
    exporter, app, setup = traced(0.0)
    try:
        for _ in range(20):
            call(app, [(b"traceparent", SAMPLED_PARENT)])
        assert exporter.get_finished_spans() == ()
        # What the engine is told: the same trace, not sampled, so vLLM records nothing either.
        assert seen[-1] is not None and seen[-1].startswith(SAMPLED_PARENT[:36]) and seen[-1].endswith(b"-00")
    finally:
        setup.shutdown()


def test_a_parent_s_trace_id_does_not_decide_the_sampling() -> None:
    """A ratio by trace id would sample this id always: the client chose it."""
    exporter, app, setup = traced(0.5)
    try:
        for _ in range(200):
            call(app, [(b"traceparent", b"00-00000000000000000000000000000001-b7ad6b7169203331-01")])
        servers = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/completions"]
        assert 20 < len(servers) < 180  # about half: a random draw
    finally:
        setup.shutdown()


def test_probes_are_not_traced() -> None:
    exporter, app, setup = traced(1.0)
    try:
        scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}

        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            pass

        asyncio.run(app(scope, receive, send))
        assert [s.name for s in exporter.get_finished_spans() if s.name.startswith("GET")] == []
    finally:
        setup.shutdown()


def test_the_engine_is_told_the_server_span_as_parent() -> None:
    exporter, app, setup = traced(1.0)
    try:
        call(app, [(b"traceparent", SAMPLED_PARENT), (b"traceparent", b"00-junk")])
        spans = {s.name: s for s in exporter.get_finished_spans()}
        server = spans["POST /v1/completions"]
        assert format(server.context.trace_id, "032x") == SAMPLED_PARENT[3:35].decode()
        assert spans["inner"].parent.span_id == server.context.span_id
        assert seen[-1] == f"00-{server.context.trace_id:032x}-{server.context.span_id:016x}-01".encode()
    finally:
        setup.shutdown()


def test_off_means_no_spans_at_all() -> None:
    assert Tracing(None, 1.0).tracer is None
    ctx = RequestContext()  # no tracing middleware set its tracer
    assert tracing.span(ctx, "anything") is tracing.span(ctx, "else")  # one shared null context
