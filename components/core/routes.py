"""The route table: every path the service answers and what each layer needs to know of it,
declared once (who may call it, whether it is logged, counted and traced, which API's
error shape it speaks, its bounded metrics label).

Every reader asks `route(path)`: the access log, auth and the rate limit's public check,
BentoML's metrics paths, the probes, the trace's route name, the error dialect. The modules
that register routes with FastAPI keep their decorator paths; tests/unit/test_routes.py
checks each is in this table, and that no other module lists a route path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# public: no key; key: any valid key; admin: an admin key whenever keys are on;
# metrics: public, or admin under PROTECT_METRICS (a protected /metrics names every
# tenant's key id: components/core/metrics.py).
Access = Literal["public", "key", "admin", "metrics"]
DialectName = Literal["openai", "anthropic", "responses"]
Probe = Literal["health", "ready", "live"]


@dataclass(frozen=True)
class Route:
    path: str  # the exact path; with `prefix`, every path under it
    access: Access = "key"
    dialect: DialectName = "openai"  # the shape of its errors (components/core/dialects.py)
    quiet: bool = False  # no access-log line
    counted: bool = True  # in the request metrics (requests, durations, connections)
    traced: bool = True  # a server span when tracing is on
    generates: bool = False  # time to first token and throughput are recorded
    probe: Probe | None = None  # answered or reshaped by components/edge/health.py
    prefix: bool = False
    label: str = ""  # the bounded metrics and span label; the path itself when empty

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.path)

    def public(self, protect_metrics: bool) -> bool:
        return self.access == "public" or self.access == "metrics" and not protect_metrics

    def admin(self, protect_metrics: bool) -> bool:
        return self.access == "admin" or self.access == "metrics" and protect_metrics


def _probe(path: str, probe: Probe) -> Route:
    # Probes are polled every few seconds by orchestrators: noise in the log, the metrics and traces.
    return Route(path, access="public", quiet=True, counted=False, traced=False, probe=probe)


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", generates=True),
    Route("/v1/completions", generates=True),
    Route("/v1/messages", dialect="anthropic", generates=True),
    Route("/v1/messages/count_tokens", dialect="anthropic"),
    Route("/v1/responses", dialect="responses", generates=True),
    Route("/v1/responses/", dialect="responses", prefix=True, label="/v1/responses/{id}"),
    Route("/v1/models"),
    Route("/v1/models/", prefix=True, label="/v1/models/{id}"),
    Route("/tokenize"),
    Route("/detokenize"),
    # They show the service's insides.
    Route("/debug/runtime", access="admin"),
    Route("/admin/usage", access="admin"),
    Route("/docs", access="public"),
    Route("/openapi.json", access="public"),
    # BentoML's own routes.
    _probe("/healthz", "health"),
    _probe("/readyz", "ready"),
    _probe("/livez", "live"),
    Route("/metrics", access="metrics", quiet=True, counted=False, traced=False),
)
# Any path not in the table: needs a key, counted under one label.
OTHER = Route("", label="other")

_EXACT = {route.path: route for route in ROUTES if not route.prefix}
# Longest first: a longer prefix is the more specific route.
_PREFIXES = sorted((route for route in ROUTES if route.prefix), key=lambda route: -len(route.path))
LABELS = frozenset({route.label for route in ROUTES} | {OTHER.label})


def route(path: str) -> Route:
    found = _EXACT.get(path)
    if found is not None:
        return found
    for candidate in _PREFIXES:
        if path.startswith(candidate.path):
            return candidate
    return OTHER


def endpoint_label(path: str) -> str:
    return route(path).label


def public_paths(protect_metrics: bool) -> frozenset[str]:
    return frozenset(r.path for r in ROUTES if r.public(protect_metrics))


def admin_paths(protect_metrics: bool) -> frozenset[str]:
    return frozenset(r.path for r in ROUTES if r.admin(protect_metrics))
