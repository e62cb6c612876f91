"""Everything a running service holds, assembled at startup and taken down at shutdown
(once): the engine-free parts (components/app/parts.py), the engine and its app
(components/app/startup.py), the supervisor that watches the engine and drains on SIGTERM,
and what the probes and /debug/runtime show of them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from components.app.parts import Parts
from components.app.startup import decide_spec, prepare_compile_cache, start_engine
from components.app.supervisor import Supervisor
from components.core import host
from components.core.redact import redacted
from components.core.settings import Settings
from components.edge.front_door import FrontDoor
from components.edge.health import Snapshot, health_document, now_iso, readiness
from components.vllm_adapter import engine as engine_mod

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.vllm_adapter.compile_cache import CompileCache
    from components.vllm_adapter.engine_spec import EngineSpec
    from components.vllm_adapter.vllm_bridge import OpenAIBridge

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parts = parts = Parts(settings, self._abort)
        # The names the front door, the service and the tests use.
        self.metrics, self.keys, self.ledger, self.store = parts.metrics, parts.keys, parts.ledger, parts.store
        self.tracing, self.limiter, self.breaker, self.gate = parts.tracing, parts.limiter, parts.breaker, parts.gate
        self.gpu = parts.gpu
        self.compile_cache: CompileCache | None = None
        self.started_at = time.time()
        self.spec: EngineSpec | None = None
        self.engine: Any = None
        self.bridge: OpenAIBridge | None = None
        self._shut_down = False
        self.ready = False
        self.engine_pids: list[int] = []
        res = settings.resilience
        self.supervisor = Supervisor(self.gate, self._engine_dead, self.shutdown,
                                     watchdog_interval_s=res.watchdog_interval,
                                     death_exit_s=res.engine_death_exit_seconds,
                                     drain_timeout_s=res.graceful_shutdown_timeout)

    async def _abort(self, engine_ids: Any) -> None:
        if self.bridge is not None:
            await self.bridge.abort(engine_ids)

    def _set_engine(self, engine: Any) -> None:
        self.engine = engine

    async def start(self) -> FastAPI:
        self.keys.start()  # warns when authentication is off
        self.spec = spec = await decide_spec(self.settings)
        self.compile_cache = cache = prepare_compile_cache(self.settings, spec, self.parts)
        started = await start_engine(self.settings, spec, cache, self.parts, self.debug_info, self._set_engine)
        self.bridge, self.engine_pids = started.bridge, started.engine_pids
        self.supervisor.start()
        self.ready = True
        return started.app

    def snapshot(self) -> Snapshot:
        return Snapshot(
            loaded=self.ready,
            engine_alive=self.supervisor.engine_alive,
            draining=self.supervisor.draining,
            breaker=self.breaker.state.name.lower(),
            readiness_strict=self.settings.server.readiness_strict,
            model=self.spec.served_name if self.spec else None,
            uptime_seconds=time.time() - self.started_at,
            active_requests=len(self.gate.inflight),
            queued_requests=self.gate.admission.waiting,
            total_requests=self.gate.total,
            engine_unfinished_requests=self.engine and engine_mod.unfinished_requests(self.engine, self._missing),
            device=self.gpu.summary(),
            warmup_cache=self.compile_cache.status() if self.compile_cache else None,
            keys_policy=self.keys.status,
        )

    def healthz(self) -> dict[str, Any]:
        return health_document(self.snapshot(), now_iso())

    def readiness(self) -> tuple[bool, str]:
        # Probed often: only what readiness reads (the breaker only when it decides).
        strict = self.settings.server.readiness_strict
        breaker = self.breaker.state.name.lower() if strict else "unread"
        return readiness(Snapshot(self.ready, self.supervisor.engine_alive, self.supervisor.draining, breaker, strict))

    def is_alive(self) -> bool:
        return self.supervisor.engine_alive

    def debug_info(self) -> dict[str, Any]:
        return {
            "versions": host.runtime_versions(),
            "settings": redacted(self.settings),
            "engine_args": self.spec.cli_args if self.spec else None,
            "model": self.spec.describe() if self.spec else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "engine_pids": self.engine_pids,
            "device": {"gpus": [sample.__dict__ for sample in self.gpu.latest], "nvml": self.gpu.available},
            "warmup_cache": self.compile_cache.status() if self.compile_cache else None,
            "breaker": self.breaker.state.name.lower(),
            "keys_policy": self.keys.describe(),
        }

    def _engine_dead(self) -> bool:
        return engine_mod.engine_dead(self.engine, self.engine_pids, self._missing)

    def _missing(self, path: str) -> None:
        self.metrics.introspection_failures.labels(path).inc()

    def front_door(self, downstream: Any) -> Any:
        """The middleware around BentoML's whole app, in the order `FrontDoor.build` shows."""
        settings = self.settings
        return FrontDoor(
            keys=self.keys,
            limiter=self.limiter,
            cors_origins=settings.limits.cors_origins,
            max_request_bytes=settings.api.max_request_bytes,
            protect_metrics=settings.auth.protect_metrics,
            max_header_bytes=settings.server.max_header_bytes,
            body_read_timeout_s=settings.server.body_read_timeout_s,
            metrics=self.metrics,
            access_log=settings.server.request_tracing,
            on_rate_limited=lambda kind: self.metrics.rate_limited.labels(kind).inc(),
            health=(self.healthz, self.readiness),
            tracer=self.tracing.tracer,
        ).build(downstream)

    async def shutdown(self) -> None:
        """Idempotent: BentoML's shutdown hook and the forced exit after a drain may both call it."""
        if self._shut_down:
            return
        self._shut_down = True
        self.ready = False
        self.supervisor.stop()
        if self.engine is not None:
            engine_mod.shutdown_engine(self.engine)
        self.gpu.stop()
        self.keys.stop()
        await self.parts.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushing may wait on the collector
