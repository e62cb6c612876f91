"""Every metric the service exports, in one place.

BentoML runs its workers with PROMETHEUS_MULTIPROC_DIR set and its /metrics aggregates every
prometheus_client metric written in them, next to its own and vLLM's `vllm:*` metrics. So the
objects here are created with `registry=None` (the multiprocess files are what counts), and
every gauge names how processes combine.

Nothing unauthenticated sees tenant data: the per-key series name keys by their ids only
where /metrics needs a key (PROTECT_METRICS=true; Prometheus scrapes with a bearer token).
On a public /metrics every key's traffic counts under `key_id="hidden"`: the totals stay,
the tenants do not show. Decided where the series are written, so no scrape, route or
reader can see what was never recorded.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Time to first token: 10 ms .. 60 s.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Whole requests: 10 ms .. 10 min.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Output tokens per second of one request.
THROUGHPUT_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

# The `endpoint` label's values: the route table's labels (components/core/routes.py), bounded.

# The key id on a public /metrics.
HIDDEN_KEY = "hidden"


class KeyLabelled:
    """A counter whose first label is a key id, shown only where `show` (else HIDDEN_KEY)."""

    def __init__(self, counter: Counter, show: bool) -> None:
        self.metric = counter
        self.show = show

    def labels(self, key_id: str, *rest: str) -> Counter:
        return self.metric.labels(key_id if self.show else HIDDEN_KEY, *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)  # otherwise the counter itself (name, collect ...)


class Metrics:
    def __init__(self, key_ids: bool = False) -> None:
        """`key_ids`: /metrics needs a key (PROTECT_METRICS), so the per-key series may name keys."""
        self.requests = Counter(
            "vllm_request_total", "Requests answered, by HTTP status, endpoint and model.",
            ["status", "endpoint", "model"], registry=None,
        )
        self.duration = Histogram(
            "vllm_request_duration_seconds", "Time from request to last byte of the response.",
            ["endpoint"], buckets=DURATION_BUCKETS, registry=None,
        )
        self.active = Gauge(
            "vllm_active_requests", "Generations admitted and not finished (running in the engine).",
            multiprocess_mode="livesum", registry=None,
        )
        self.queue = Gauge(
            "vllm_queue_size", "Generations waiting for an engine slot: in the fair queue, plus sequences "
            "waiting in vLLM's queue beyond its batch (MAX_NUM_SEQS).",
            multiprocess_mode="livesum", registry=None,
        )
        # Deadlines (TTFT objectives): refused at arrival (predicted to start too late) or
        # dropped from the queue (their deadline passed); none is ever started late.
        self.deadline_refusals = Counter(
            "vllm_deadline_refusals_total", "Requests refused for their time-to-first-token deadline, by when: "
            "arrival (predicted to start past it) or queued (it passed while they waited).", ["when"], registry=None,
        )
        self.granted_past_deadline = Counter(
            "vllm_granted_past_deadline_total", "Requests started past their deadline (0 by construction).",
            registry=None,
        )
        self.queue_wait = Histogram(
            "vllm_queue_wait_seconds", "Time a started generation waited in the fair queue for a place in the "
            "engine (0 when it started at once).", buckets=TTFT_BUCKETS, registry=None,
        )
        self.throughput = Histogram(
            "vllm_token_throughput", "Output tokens per second of each finished generation.",
            ["endpoint"], buckets=THROUGHPUT_BUCKETS, registry=None,
        )
        self.ttft = Histogram(
            "vllm_ttft_seconds", "Time to first token (streaming: to the first content event; "
            "non-streaming: as measured by the engine).",
            ["endpoint", "stream"], buckets=TTFT_BUCKETS, registry=None,
        )
        self.connections = Gauge(
            "vllm_concurrent_connections", "HTTP requests being served right now (probes and /metrics excluded).",
            multiprocess_mode="livesum", registry=None,
        )
        self.breaker_state = Gauge(
            "vllm_circuit_breaker_state", "Circuit breaker: 0 closed, 1 open, 2 half-open.",
            multiprocess_mode="max", registry=None,
        )
        self.introspection_failures = Counter(
            "vllm_engine_introspection_failures_total",
            "Reads of vLLM internals that found nothing (after a vLLM upgrade): path.", ["path"], registry=None,
        )
        self.warm_cache_hits = Counter(
            "vllm_warm_cache_hits_total", "Engine starts that found their compile cache.", registry=None,
        )
        self.oom_events = Counter(
            "vllm_oom_events_total", "Engine out-of-memory errors.", registry=None,
        )
        self.rate_limited = Counter(
            "vllm_rate_limited_total", "Requests refused by a rate limit, by kind.", ["kind"], registry=None,
        )
        self.auth_failures = Counter(
            "vllm_auth_failures_total", "Requests refused by authentication, by reason (missing, invalid, "
            "disabled, expired, not_admin).", ["reason"], registry=None,
        )
        # One for every shared storage (components/storage/): rate limits, token ledger, heartbeat, responses.
        self.storage_errors = Counter(
            "vllm_storage_errors_total", "Calls to a shared storage (Redis: rate limits, token ledger, replica "
            "heartbeat, response store) that failed or timed out; calls refused at once while it rests after a "
            "failure are not counted.", registry=None,
        )
        # Per key: label values are the keys' ids (bounded by the keys configured) or
        # "anonymous" (no key, or keys off); all "hidden" unless /metrics needs a key.
        self.key_requests = KeyLabelled(Counter(
            "vllm_key_requests_total", "Requests by API key id (\"hidden\" while /metrics is public) and "
            "status class (2xx, 4xx, 5xx).", ["key_id", "status_class"], registry=None,
        ), key_ids)
        self.key_tokens = KeyLabelled(Counter(
            "vllm_key_tokens_total", "Tokens the engine reported, by API key id (\"hidden\" while /metrics is "
            "public) and kind (prompt, completion).", ["key_id", "kind"], registry=None,
        ), key_ids)
        self.keys_reload_errors = Counter(
            "vllm_keys_reload_errors_total", "Keys file reloads that failed (the last good policy stayed).",
            registry=None,
        )
        labels = ["gpu", "uuid"]
        self.gpu_memory = Gauge(
            "vllm_gpu_memory_usage_gb", "GPU memory used, GiB (2^30 bytes).", labels, multiprocess_mode="mostrecent",
            registry=None,
        )
        self.gpu_memory_total = Gauge(
            "vllm_gpu_memory_total_gb", "GPU memory in total, GiB (2^30 bytes).", labels,
            multiprocess_mode="mostrecent",
            registry=None,
        )
        self.gpu_utilization = Gauge(
            "vllm_gpu_utilization_percent", "GPU utilization, %.", labels, multiprocess_mode="mostrecent",
            registry=None,
        )
        self.gpu_temperature = Gauge(
            "vllm_gpu_temperature_celsius", "GPU temperature, °C.", labels, multiprocess_mode="mostrecent",
            registry=None,
        )
        self.gpu_power = Gauge(
            "vllm_gpu_power_watts", "GPU power draw, W.", labels, multiprocess_mode="mostrecent", registry=None,
        )
