"""Everything a running service holds, assembled at startup and taken down at shutdown
(once): the engine, the front door's parts, the supervisor that watches the engine and
drains on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from components.app.supervisor import Supervisor
from components.core import host
from components.core.errors import EngineOutOfMemory, ServiceError
from components.core.metrics import Metrics
from components.core.redact import redacted
from components.core.settings import Settings
from components.core.settings_env import export_engine_environment
from components.edge.front_door import FrontDoor
from components.edge.gpu_monitor import GpuMonitor
from components.edge.health import Snapshot, health_document, now_iso, readiness
from components.edge.keys_file import policy_source
from components.edge.ledger import ledger_for, usage_report
from components.edge.ratelimit import RateLimiter
from components.edge.response_store import store_for
from components.edge.tracing import Tracing
from components.serving.admission import Admission, per_key_shares
from components.serving.breaker import CircuitBreaker, State
from components.serving.lifecycle import Gate
from components.vllm_adapter import bundled_model, engine_spec
from components.vllm_adapter import engine as engine_mod
from components.vllm_adapter.compile_cache import CompileCache
from components.vllm_adapter.engine_spec import EngineSpec

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.vllm_adapter.vllm_bridge import OpenAIBridge

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        """The parts that need no engine: the front door works (and answers 503) while
        the model loads."""
        self.settings = settings
        res = settings.resilience
        self.metrics = Metrics(key_ids=settings.auth.protect_metrics)
        self.keys = policy_source(settings, self.metrics.keys_reload_errors.inc)
        self.ledger = ledger_for(settings.limits, self.metrics.limiter_errors.inc)
        self.store = store_for(settings.limits, settings.api, one_tenant=self.keys.current.mode == "off")
        server = settings.server
        self.tracing = Tracing(server.otlp_traces_endpoint, server.traces_sample_ratio, server.otlp_traces_protocol)
        self.limiter = RateLimiter(settings.limits, self.metrics.limiter_errors.inc, ledger=self.ledger)
        self.breaker = CircuitBreaker.from_settings(res, self._breaker_changed)
        self.metrics.breaker_state.set(State.CLOSED)
        # Without keys every caller is one tenant: no per-key shares.
        limits, batch = settings.limits, settings.engine.max_num_seqs
        slots = batch + (batch if limits.engine_queue_depth is None else limits.engine_queue_depth)
        running_share, queued_share = per_key_shares(slots, limits.max_queue_size, limits.max_inflight_per_key,
                                                     limits.max_queued_per_key) if self.keys.current.enabled else (0, 0)
        admission = Admission(slots, limits.max_queue_size, max_wait_s=limits.queue_timeout_s,
                              running_per_key=running_share, queued_per_key=queued_share, on_change=self._queue_changed,
                              low_share=limits.priority_batch_share, aging_s=limits.priority_aging_s, batch_size=batch)
        self.gate = Gate(admission, self.breaker, self._abort, res.request_timeout, self._request_failed)
        self.gpu = GpuMonitor(self.metrics, settings.server.gpu_monitor_interval)
        self.compile_cache: CompileCache | None = None
        self.started_at = time.time()
        self.spec: EngineSpec | None = None
        self.engine: Any = None
        self.bridge: OpenAIBridge | None = None
        self._shut_down = False
        self.ready = False
        self.engine_pids: list[int] = []
        self.supervisor = Supervisor(self.gate, self._engine_dead, self.shutdown,
                                     watchdog_interval_s=res.watchdog_interval,
                                     death_exit_s=res.engine_death_exit_seconds,
                                     drain_timeout_s=res.graceful_shutdown_timeout)

    def _breaker_changed(self, state: State) -> None:
        logger.warning("circuit breaker is now %s", state.name.lower())
        self.metrics.breaker_state.set(int(state))

    def _queue_changed(self, running: int, waiting: int) -> None:
        self.metrics.active.set(running)
        self.metrics.queue.set(waiting)

    def _request_failed(self, error: ServiceError) -> None:
        if isinstance(error, EngineOutOfMemory):
            self.metrics.oom_events.inc()
            logger.error("engine out of memory with %d request(s) in flight and %d queued",
                         len(self.gate.inflight), self.gate.admission.waiting)

    async def _abort(self, engine_ids: Any) -> None:
        if self.bridge is not None:
            await self.bridge.abort(engine_ids)

    async def start(self) -> FastAPI:
        from components.api.openai_app import build_aliases, build_openai_app
        from components.vllm_adapter.vllm_bridge import OpenAIBridge

        settings = self.settings
        self.keys.start()  # warns when authentication is off
        gpus = await asyncio.to_thread(host.gpu_count)  # imports torch: seconds
        self.spec = spec = engine_spec.resolve_spec(
            settings.engine, gpus, settings.resilience.graceful_shutdown_timeout, settings.server.otlp_traces_endpoint)
        self.compile_cache = CompileCache.prepare(settings.engine.cache_dir, engine_spec.compile_key_parts(spec),
                                                  enabled="--enforce-eager" not in spec.cli_args)
        if self.compile_cache.was_cached:
            self.metrics.warm_cache_hits.inc()
        logger.info("compile cache %s (found: %s)", self.compile_cache.path, self.compile_cache.was_cached)
        export_engine_environment(settings.engine, spec.engine_env, str(self.compile_cache.path))
        self.gpu.start()
        engine_spec.log_choices(spec, settings.engine)
        if not spec.on_gpu and not settings.engine.model_path:
            await asyncio.to_thread(bundled_model.ensure_converted, settings.engine.cache_dir)

        aliases = build_aliases(spec.served_name, settings.api.model_aliases)
        args = engine_mod.parse_engine_args(spec)
        self.engine = await engine_mod.start_engine(args, lambda: self.gate.admission.waiting)
        try:
            self.bridge = await OpenAIBridge.create(self.engine, args)
            app = build_openai_app(
                self.bridge, aliases, settings.api, self.gate, self.debug_info,
                stall_timeout_s=settings.resilience.stream_stall_timeout,
                ledger=self.ledger, tokens_per_minute=settings.limits.tokens_per_minute,
                usage_report=lambda: usage_report(self.ledger, self.keys.current, settings.limits.tokens_per_minute),
                store=self.store, grammar_tokenizer=spec.model)
            self.engine_pids = engine_mod.engine_core_pids(self.engine, self._missing)
            if settings.engine.warmup:
                await engine_mod.warm_up(self.engine)
        except BaseException:
            engine_mod.shutdown_engine(self.engine)
            raise
        engine_mod.freeze_startup_heap()
        self.supervisor.start()
        self.ready = True
        return app

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
        await asyncio.gather(self.limiter.close(), self.ledger.close(), self.store.close())
        await asyncio.to_thread(self.tracing.shutdown)  # flushing may wait on the collector
