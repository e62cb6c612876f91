"""BentoML's own request middlewares, adjusted (pinned to BentoML 1.4): bounded `endpoint`
labels on its request metrics, and its OpenTelemetry middleware without a span per message.

BentoML's traffic-metrics middleware runs outside every user middleware and labels its
`bentoml_service_request_*` series with the raw request path, so each random path a
client (keyless included) sends creates new series and /metrics grows without bound. No
setting changes that; BentoML builds the middleware from a class it imports by name when
the server starts, so we put a subclass in that name: it shows the middleware a folded path
(`other` for any path the service does not serve) and hands the real one on.

BentoML's OpenTelemetry middleware (which it adds always, traced or not) opens a span for
every ASGI message; a stream sends one message per token, and those spans were about 5 %
of the API process's CPU at concurrency 64. It keeps its one span per request; BentoML
imports the class by name when the server starts, so the subclass goes in that name too.

The metrics middleware is the outermost but for Starlette's error middleware (which only
notes that a response started), so it also hands the request context the `send` it got:
the wire, below every other middleware (see components/serving/interrupts.py for its one use).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from components.core.context import request_context
from components.core.routes import OTHER, route

_REAL_PATH = "llm_service.real_path"


def metric_path(path: str) -> str:
    """The route table's label (BentoML's own routes, which it skips by path, keep theirs);
    `/other` for every path the service does not serve."""
    found = route(path)
    return "/other" if found is OTHER else found.label


class _RestorePath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        real = scope.get(_REAL_PATH)
        if real is not None:
            scope = dict(scope, path=real)
            del scope[_REAL_PATH]
        await self.app(scope, receive, send)


def install() -> None:
    _fold_metric_paths()
    _request_spans_only()


def _fold_metric_paths() -> None:
    from bentoml._internal.server.http import instruments

    original = instruments.RunnerTrafficMetricsMiddleware
    if getattr(original, "folds_paths", False):
        return

    class FoldedPathMetricsMiddleware(original):  # type: ignore[misc, valid-type]
        folds_paths = True

        def __init__(self, app: ASGIApp, *args: Any, **kwargs: Any) -> None:
            super().__init__(_RestorePath(app), *args, **kwargs)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                request_context(scope).wire_send = send
            if scope["type"] in ("http", "websocket"):
                folded = metric_path(scope["path"])
                if folded != scope["path"]:
                    scope = {**scope, "path": folded, _REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = FoldedPathMetricsMiddleware  # type: ignore[misc]


def _request_spans_only() -> None:
    from opentelemetry.instrumentation import asgi

    original = asgi.OpenTelemetryMiddleware
    if getattr(original, "request_spans_only", False):
        return

    class RequestSpanOnly(original):  # type: ignore[misc, valid-type]
        request_spans_only = True

        def __init__(self, app: ASGIApp, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("exclude_spans", ["receive", "send"])
            super().__init__(app, *args, **kwargs)

    asgi.OpenTelemetryMiddleware = RequestSpanOnly  # type: ignore[misc]
