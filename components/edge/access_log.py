"""One JSON access-log line and the request metrics for every HTTP request
(probes and /metrics: metrics excluded, logged at DEBUG only)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import RequestContext, request_context
from components.core.errors import ClientClosed
from components.core.metrics import Metrics, endpoint_label
from components.core.responses import send_error

logger = logging.getLogger("access")
QUIET_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
GENERATION_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"})


def _trace_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"traceparent":
            parts = value.decode("latin-1").split("-")
            return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
    return None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        quiet = path in QUIET_PATHS
        ctx = request_context(scope)
        started = ctx.started
        status_holder = {"status": 500}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = 1
            await send(message)

        metrics = None if quiet else self.metrics
        if metrics is not None:
            metrics.connections.inc()
        try:
            await self.app(scope, receive, record_status)
            if "started" not in status_holder:
                # Nothing answered (the client left before its body was read, say). Some
                # answer must go out: BentoML's timeout middleware waits for a first send,
                # and would park this request for traffic.timeout otherwise.
                ctx.error_type = ctx.error_type or ClientClosed.code
                await send_error(record_status, ClientClosed("The client closed the connection."))
        finally:
            duration = time.perf_counter() - started
            # A client gone mid-stream was answered 200 on the wire; it is recorded as 499.
            status = ctx.status or status_holder["status"]
            if metrics is not None:
                metrics.connections.dec()
                self._observe(metrics, path, status, duration, ctx)
            if self.enabled and not quiet:
                self._log(scope, status, duration, ctx)

    @staticmethod
    def _observe(metrics: Metrics, path: str, status: int, duration: float, ctx: RequestContext) -> None:
        endpoint = endpoint_label(path)
        metrics.requests.labels(str(status), endpoint, ctx.model or "none").inc()
        metrics.key_requests.labels(ctx.tenant, f"{status // 100}xx").inc()
        for kind in ("prompt", "completion"):
            tokens = (ctx.usage or {}).get(f"{kind}_tokens")
            if tokens:
                metrics.key_tokens.labels(ctx.tenant, kind).inc(tokens)
        metrics.duration.labels(endpoint).observe(duration)
        if endpoint not in GENERATION_ENDPOINTS or status != 200:
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
