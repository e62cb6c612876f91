"""Probes: the rich `GET /healthz` document, and JSON reasons on BentoML's /readyz and /livez.

`/healthz` is public: it carries no tenant data (no keys file path, key count, key id or
reload error), only the keys policy's coarse status; the admin view (/debug/runtime) has
the details.

BentoML registers /healthz, /livez and /readyz ahead of any mounted app; this middleware
sits in front of BentoML's app, so it can answer /healthz itself and give the other two
(still decided by the service's __is_ready__/__is_alive__ hooks) a JSON body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.routes import route

StatusSource = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    """What the probes and `/healthz` read, taken at one instant."""

    loaded: bool
    engine_alive: bool
    draining: bool
    breaker: str  # closed, open, half_open
    readiness_strict: bool = False
    model: str | None = None
    uptime_seconds: float = 0.0
    active_requests: int = 0
    queued_requests: int = 0
    total_requests: int = 0
    engine_unfinished_requests: int | None = None
    device: dict[str, Any] = field(default_factory=dict)
    warmup_cache: dict[str, Any] | None = None
    keys_policy: str | None = None  # ok, stale, refusing, off (keys_file.PolicySource.status)


def readiness(s: Snapshot) -> tuple[bool, str]:
    if not s.loaded:
        return False, "model loading"
    if not s.engine_alive:
        return False, "engine dead"
    if s.draining:
        return False, "draining"
    if s.readiness_strict and s.breaker == "open":
        return False, "circuit breaker open"
    return True, "ready"


def health_document(s: Snapshot, timestamp: str) -> dict[str, Any]:
    """The `/healthz` body: `dead` is answered with 503, every other status with 200."""
    if not s.engine_alive:
        status = "dead"
    elif not s.loaded:
        status = "starting"
    elif s.draining or s.breaker != "closed" or s.keys_policy == "refusing":
        status = "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "reason": readiness(s)[1],
        "timestamp": timestamp,
        "uptime_seconds": round(s.uptime_seconds, 1),
        "model": s.model,
        "model_loaded": s.loaded,
        "draining": s.draining,
        "active_requests": s.active_requests,
        "engine_unfinished_requests": s.engine_unfinished_requests,
        "queued_requests": s.queued_requests,
        "total_requests": s.total_requests,
        "circuit_breaker_state": s.breaker,
        **s.device,
        "warmup_cache": s.warmup_cache,
        "keys_policy": s.keys_policy,
    }


async def _send_json(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HealthMiddleware:
    """Which paths are the probes: the route table. Every other route's body passes untouched;
    the probes' bodies are ours (their status stays BentoML's)."""

    passes_body_through = True

    def __init__(self, app: ASGIApp, healthz: StatusSource, readiness: Callable[[], tuple[bool, str]]) -> None:
        self.app = app
        self.healthz = healthz
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        probe = route(scope["path"]).probe if scope["type"] == "http" else None
        if probe == "health" and scope["method"] in ("GET", "HEAD"):
            document = self.healthz()
            await _send_json(send, 200 if document["status"] != "dead" else 503, document)
            return
        if probe not in ("ready", "live"):
            await self.app(scope, receive, send)
            return
        # BentoML's hooks decide the status; we replace its plain-text body with JSON.
        status_holder: dict[str, int] = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                status = status_holder.get("status", 500)
                if probe == "ready":
                    _, reason = self.readiness()
                    document = {"status": "ready" if status == 200 else "not_ready", "reason": reason}
                else:
                    document = {"status": "alive" if status == 200 else "dead"}
                await _send_json(send, status, document)

        await self.app(scope, receive, capture)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
