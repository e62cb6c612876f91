"""One JSON access-log line and the request metrics for every HTTP request (but the routes
the route table marks quiet and uncounted: probes and /metrics)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import RequestContext, request_context
from components.core.errors import ClientClosed
from components.core.metrics import Metrics
from components.core.responses import send_error
from components.core.routes import Route, route

logger = logging.getLogger("access")


def _trace_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"traceparent":
            parts = value.decode("latin-1").split("-")
            return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
    return None


class AccessLogMiddleware:
    passes_body_through = True

    def __init__(self, app: ASGIApp, metrics: Metrics | None, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        served = route(scope["path"])
        ctx = request_context(scope)
        started = ctx.started
        status_holder = {"status": 500}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = 1
            await send(message)

        metrics = self.metrics if served.counted else None
        if metrics is not None:
            metrics.connections.inc()
        try:
            await self.app(scope, receive, record_status)
            if "started" not in status_holder:
                # Nothing answered (the client left before its body was read, say). Some
                # answer must go out: BentoML's timeout middleware waits for a first send,
                # and would park this request for traffic.timeout otherwise.
                await send_error(scope, record_status, ClientClosed("The client closed the connection."))
        finally:
            duration = time.perf_counter() - started
            # A client gone mid-stream was answered 200 on the wire; it is recorded as 499.
            status = ctx.status or status_holder["status"]
            if metrics is not None:
                metrics.connections.dec()
                self._observe(metrics, served, status, duration, ctx)
            if self.enabled and not served.quiet:
                self._log(scope, status, duration, ctx)

    @staticmethod
    def _observe(metrics: Metrics, served: Route, status: int, duration: float, ctx: RequestContext) -> None:
        endpoint = served.label
        metrics.requests.labels(str(status), endpoint, ctx.model or "none").inc()
        metrics.key_requests.labels(ctx.tenant, f"{status // 100}xx").inc()
        for kind in ("prompt", "completion"):
            tokens = (ctx.usage or {}).get(f"{kind}_tokens")
            if tokens:
                metrics.key_tokens.labels(ctx.tenant, kind).inc(tokens)
        metrics.duration.labels(endpoint).observe(duration)
        if not served.generates or status != 200:
            return
        ttft = ctx.ttft_s
        if ttft is not None:
            metrics.ttft.labels(endpoint, str(bool(ctx.stream)).lower()).observe(ttft)
        completion = (ctx.usage or {}).get("completion_tokens")
        if completion and duration > 0:
            metrics.throughput.labels(endpoint).observe(completion / duration)

    @staticmethod
    def _log(scope: Scope, status: int, duration: float, ctx: RequestContext) -> None:
        usage = ctx.usage or {}
        fields = {
            "request_id": ctx.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration * 1000, 2),
            "model": ctx.model,
            "key_id": ctx.key_id,
            "client": (scope.get("client") or ("", 0))[0],
            "stream": ctx.stream,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "ttft_ms": round(ctx.ttft_s * 1000, 2) if ctx.ttft_s is not None else None,
            "finish_reason": ctx.finish_reason,
            "error_type": ctx.error_type,
            "trace_id": _trace_id(scope),
        }
        logger.log(logging.WARNING if status >= 500 else logging.INFO, "request", extra=fields)
