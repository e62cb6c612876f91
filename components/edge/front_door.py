"""The front door: every middleware around BentoML's whole app (probes and /metrics
included), in order, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp

from components.core.metrics import Metrics
from components.core.routes import endpoint_label, public_paths
from components.edge.access_log import AccessLogMiddleware
from components.edge.auth import AuthMiddleware
from components.edge.health import HealthMiddleware, StatusSource
from components.edge.keys_file import PolicySource
from components.edge.middleware import (
    BodyLimitMiddleware,
    HeaderLimitMiddleware,
    PublicMethodsMiddleware,
    RequestIdMiddleware,
    cors,
)
from components.edge.ratelimit import RateLimiter, RateLimitMiddleware
from components.edge.tracing import TraceMiddleware


@dataclass(frozen=True)
class FrontDoor:
    keys: PolicySource
    limiter: RateLimiter
    cors_origins: tuple[str, ...]
    max_request_bytes: int
    protect_metrics: bool = False
    max_header_bytes: int = 16384
    body_read_timeout_s: float = 10.0
    metrics: Metrics | None = None  # none: no request metrics (benchmarks, unit tests)
    access_log: bool = False
    on_rate_limited: Callable[[str], None] | None = None
    # (the /healthz document, readiness with its reason); none: no health layer
    health: tuple[StatusSource, Callable[[], tuple[bool, str]]] | None = None
    tracer: Any = None  # components/edge/tracing.py; none: no server span (tracing off)

    def _auth_refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.labels(reason).inc()

    def build(self, app: ASGIApp) -> ASGIApp:
        """Outermost first. The request id comes first so that every answer, refusals
        included, carries one; the access log sees every outcome. CORS sits outside
        everything that refuses, so that 431/405/401/403/429 carry CORS headers (browsers
        hide responses without them). What refuses on the headers alone comes before the
        body limit, so a refused request is refused without reading its body. Health is
        innermost: BentoML answers /livez and /readyz, we give them JSON bodies. Refusals
        take the shape of their route's API (components/core/responses.py)."""
        public = public_paths(self.protect_metrics)
        layers: list[Callable[[ASGIApp], ASGIApp]] = [
            RequestIdMiddleware,
            lambda a: AccessLogMiddleware(a, self.metrics, enabled=self.access_log),
            lambda a: cors(a, self.cors_origins),
            lambda a: HeaderLimitMiddleware(a, self.max_header_bytes),
            lambda a: PublicMethodsMiddleware(a, public),
            lambda a: AuthMiddleware(a, self.keys, protect_metrics=self.protect_metrics, on_refused=self._auth_refused),
            lambda a: RateLimitMiddleware(a, self.limiter, self.on_rate_limited, public),
            lambda a: BodyLimitMiddleware(a, self.max_request_bytes, self.body_read_timeout_s),
        ]
        if self.tracer is not None:  # right after the request id: the trace covers every answer
            layers.insert(1, lambda a: TraceMiddleware(a, self.tracer, endpoint_label))
        if self.health is not None:
            healthz, readiness = self.health
            layers.append(lambda a: HealthMiddleware(a, healthz, readiness))
        for layer in reversed(layers):
            app = _passing_bodies_through(layer(app))
        return app


def _passing_bodies_through(layer: ASGIApp) -> ASGIApp:
    """A stream's middle chunks skip the front door: the generation writes them straight to
    the wire (components/serving/interrupts.py). So a layer may change a response's start
    and answer on its own, but must send a 200's body chunks on as they come, byte for byte,
    or the streams it is bypassed on would differ from the answers it is not. Each layer's
    class says it does, as `passes_body_through = True`."""
    if getattr(type(layer), "passes_body_through", False) is not True:
        raise TypeError(f"{type(layer).__name__} does not declare passes_body_through = True: a front-door layer "
                        "must send a 200's body chunks on untouched")
    return layer
