"""The parts of a running service that need no engine, built first so that the front door
works (and answers 503) while the model loads: metrics, the keys policy, the limits and the
ledger, the response store, the breaker and admission behind one gate."""

from __future__ import annotations

import logging

from components.core.errors import EngineOutOfMemory, ServiceError
from components.core.metrics import Metrics
from components.core.settings import Settings
from components.edge.gpu_monitor import GpuMonitor
from components.edge.keys_file import policy_source
from components.edge.ledger import ledger_for
from components.edge.ratelimit import RateLimiter
from components.edge.response_store import store_for, store_uri
from components.edge.tracing import Tracing
from components.serving.admission import Admission
from components.serving.breaker import CircuitBreaker, State
from components.serving.grants import per_key_shares
from components.serving.lifecycle import Aborter, Gate
from components.serving.objectives import Objectives
from components.serving.ranking import ClassRanking
from components.storage.backend import Storages
from components.vllm_adapter.engine_spec import engine_headroom

logger = logging.getLogger(__name__)


class Parts:
    def __init__(self, settings: Settings, abort: Aborter) -> None:
        res, limits, server = settings.resilience, settings.limits, settings.server
        self.metrics = Metrics(key_ids=settings.auth.protect_metrics)
        self.keys = policy_source(settings, self.metrics.keys_reload_errors.inc)
        # One pool and one guarded call per distinct storage URI, shared by all their users.
        self.storages = Storages(limits.storage_timeout_s, self.metrics.storage_errors.inc)
        shared = self.storages.get(limits.storage_uri)
        self.ledger = ledger_for(shared, limits.fail_open)
        self.store = store_for(self.storages.get(store_uri(limits)), settings.api,
                               one_tenant=self.keys.current.mode == "off")
        self.tracing = Tracing(server.otlp_traces_endpoint, server.traces_sample_ratio, server.otlp_traces_protocol)
        self.limiter = RateLimiter(limits, shared, ledger=self.ledger)
        self.breaker = CircuitBreaker.from_settings(res, self._breaker_changed)
        self.metrics.breaker_state.set(State.CLOSED)
        objectives = Objectives.from_settings(limits, keys_on=self.keys.current.enabled)
        self.gate = Gate(self._admission(settings, objectives), self.breaker, abort, res.request_timeout,
                         self._request_failed, objectives, self.metrics.queue_wait.observe)
        self.gpu = GpuMonitor(self.metrics, server.gpu_monitor_interval)

    async def close(self) -> None:
        """The replica leaves the heartbeat set, then the storages' connections close."""
        await self.limiter.close()
        await self.storages.close()

    def _admission(self, settings: Settings, objectives: Objectives) -> Admission:
        limits, batch = settings.limits, settings.engine.max_num_seqs
        slots = batch + (batch if limits.engine_queue_depth is None else limits.engine_queue_depth)
        # Without keys every caller is one tenant (no per-key shares), unless a gateway names them.
        running_share, queued_share = (0, 0)
        if self.keys.current.enabled or objectives.fairness_header:
            running_share, queued_share = per_key_shares(
                slots, limits.max_queue_size, limits.max_inflight_per_key, limits.max_queued_per_key)
        return Admission(
            slots, limits.max_queue_size, max_wait_s=limits.queue_timeout_s,
            running_per_key=running_share, queued_per_key=queued_share, on_change=self._queue_changed,
            ranking=ClassRanking.from_settings(limits, batch), batch_size=batch, on_deadline=self._deadline_missed,
            headroom=engine_headroom(settings.engine),
        )

    def _breaker_changed(self, state: State) -> None:
        logger.warning("circuit breaker is now %s", state.name.lower())
        self.metrics.breaker_state.set(int(state))

    def _deadline_missed(self, when: str) -> None:
        if when == "granted_late":
            self.metrics.granted_past_deadline.inc()
        else:
            self.metrics.deadline_refusals.labels(when).inc()

    def _queue_changed(self, running: int, waiting: int) -> None:
        self.metrics.active.set(running)
        self.metrics.queue.set(waiting)

    def _request_failed(self, error: ServiceError) -> None:
        if isinstance(error, EngineOutOfMemory):
            self.metrics.oom_events.inc()
            logger.error("engine out of memory with %d request(s) in flight and %d queued",
                         len(self.gate.inflight), self.gate.admission.waiting)
