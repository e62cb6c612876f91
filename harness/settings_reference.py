"""The settings reference, docs/settings.md, generated from the settings module:

    .venv/bin/python -m harness.settings_reference > docs/settings.md

Names, groups and defaults come from the pydantic models themselves; only the meanings
are written here. tests/unit/test_settings_reference.py fails when the committed file
differs from what this prints, or when a setting has no meaning below.
"""

from __future__ import annotations

from typing import Any

from components.core import settings as s

GROUPS: list[tuple[str, type[Any]]] = [
    ("Model and engine", s.EngineSettings),
    ("API limits", s.ApiSettings),
    ("Keys", s.AuthSettings),
    ("Rate limits, queue and CORS", s.LimitSettings),
    ("Resilience", s.ResilienceSettings),
    ("Server, logs and monitoring", s.ServerSettings),
]

DESCRIPTIONS: dict[str, str] = {
    'MODEL_PATH': 'model path or Hugging Face id; unset: the README says which model ("Which model is served")',
    'SERVED_MODEL_NAME': 'the name in `/v1/models` and responses (unset: model id / `SmolLM2-135M-Instruct`)',
    'MAX_MODEL_LEN': 'context length (prompt + completion)',
    'GPU_MEMORY_UTILIZATION': 'fraction of GPU memory vLLM may use, in (0, 1]',
    'MAX_NUM_SEQS': 'sequences the engine runs at once; admission counts a request as `n` × prompts sequences',
    'QUANTIZATION': 'vLLM quantization method (unset: `awq` auto-detected for AWQ models on GPU)',
    'DTYPE': 'model dtype (`float16` on a T4, which has no bfloat16). `auto` on a CPU: `bfloat16` only where the CPU computes it natively (`amx_bf16` or `avx512_bf16` in its flags), else `float32` (emulated bfloat16 measured 5x slower TTFT at one client on an AVX2-only AMD EPYC, docs/benchmarks/cpu.json); the choice and its reason are logged at startup and shown in `/debug/runtime`',
    'VLLM_ATTENTION_BACKEND': "passed as vLLM's `--attention-backend` (vLLM 0.32 no longer reads this variable). `AUTO` lets vLLM choose: on a T4 (compute capability 7.5) it picks `TRITON_ATTN`, since FlashAttention needs 8.0. The old value `SDPA` is accepted with a warning and treated as `AUTO` (vLLM 0.32 has no SDPA decoder backend)",
    'SWAP_SPACE': "accepted for compatibility, ignored with a warning: vLLM 0.32's engine has no CPU swap space",
    'ENFORCE_EAGER': 'disable torch.compile / CUDA graphs (CPU: saves about a minute of startup) (unset: `true` on CPU, `false` on GPU)',
    'PRIORITY_HEADROOM': "sequences beyond `MAX_NUM_SEQS` in vLLM's batch that an engine step may start only for a request that outranks a running one (a higher class, or a key holding fewer sequences): it starts at the next step instead of after the next completion, holds its place until it ends and delays nobody (docs/tenants.md) (unset: a quarter of `MAX_NUM_SEQS`; `0`: none)",
    'PRIORITY_FIRST_STEP_ALONE': 'the engine step that starts a request runs without the running sequences of lower priority classes, once per request, never two steps in a row (docs/tenants.md) (unset: `true` on CPU, `false` on GPU)',
    'VLLM_CACHE_DIR': "converted bundled model and vLLM's caches",
    'HF_HOME': 'Hugging Face cache, where downloaded weights go (unset: Hugging Face default)',
    'VLLM_CPU_KVCACHE_SPACE': 'CPU only: GiB of KV cache (without it vLLM asks for 92% of RAM)',
    'CPU_RESERVED_CORES': "CPU only: cores kept free of the engine's compute threads (vLLM's `VLLM_CPU_NUM_OF_RESERVED_CPU`), for its scheduler process and the HTTP side; unset: `0` on hosts with 2 cores or fewer (measured 1.8x the throughput there, see docs/benchmarks.md), else `1` (vLLM's default); never more than the host's cores minus one",
    'TOOL_CALL_PARSER': 'vLLM tool-call parser; `none` disables tool parsing (unset: by model family)',
    'CUDA_VISIBLE_DEVICES': 'which GPU(s) the engine sees (read by CUDA itself)',
    'TRUST_REMOTE_CODE': 'allow model repos with custom code',
    'ENGINE_WARMUP': 'run a short generation (with logprobs, which vLLM compiles on first use) before reporting ready',
    'MODEL_ALIASES': 'extra aliases, `alias=<served name>,...`',
    'MAX_REQUEST_BYTES': 'largest accepted request body (413 beyond)',
    'MAX_N': 'largest `n`',
    'MAX_TOKENS_LIMIT': 'largest `max_tokens`; also the default when a request sets none (`0`: only the context bounds it)',
    'MAX_MESSAGES': 'most messages in a chat request',
    'MAX_STOP_SEQUENCES': 'most stop strings',
    'MAX_PROMPTS': 'most prompts in one `/v1/completions` request',
    'ENGINE_QUEUE_DEPTH': 'sequences admitted beyond `MAX_NUM_SEQS`, which wait rendered in vLLM\'s own scheduler so that a finished batch is refilled at the next engine step, in the fair queue\'s order (vLLM priorities from arrival, class and the key\'s sequences in the engine; docs/tenants.md); unset means `MAX_NUM_SEQS`; `0`: the fair queue holds every waiting request (docs/benchmarks.md, concurrency 64)',
    'RESPONSES_STORE_TTL_SECONDS': 'how long a stored Responses API response (for `previous_response_id` and `GET /v1/responses/{id}`) is kept',
    'RESPONSES_STORE_MAX_BYTES': 'the response store\'s bound (JSON bytes, metadata included), in memory or in Redis alike; a put past it evicts the putting key\'s own oldest records, never another key\'s (docs/responses.md)',
    'RESPONSES_STORE_KEY_MAX_BYTES': 'one API key\'s bound in the response store (JSON bytes); past it that key\'s own oldest records go, never another key\'s (unset: an eighth of `RESPONSES_STORE_MAX_BYTES`; at most all of it)',
    'RESPONSES_STORE_KEY_MAX_RECORDS': 'one API key\'s most stored responses; past it its own oldest go (unset: one per KiB of its byte quota)',
    'RESPONSES_STORE_URI': 'where stored responses live: `redis://…` (every replica\'s), or `memory://` (each replica\'s own); unset: `RATE_LIMIT_STORAGE_URI`. Give it a Redis of its own (the shipped manifests do): the limits\' Redis runs `noeviction` (docs/deployment.md, "Redis")',
    'GRAMMAR_TIMEOUT_SECONDS': 'how long a request\'s structured-output grammar (JSON schema, `pattern`, regex, grammar) may take to build, in a worker process off the event loop; past it the request gets a 400 `grammar_too_complex` naming the field',
    'API_KEYS': 'comma-separated API keys (unset: auth off, warned at startup)',
    'ADMIN_API_KEYS': 'comma-separated admin keys: API keys that may also read the admin routes (`/debug/runtime`, `/admin/usage`, and `/metrics` with `PROTECT_METRICS`), which no other key may while keys are on; with both lists empty, auth is off',
    'PROTECT_METRICS': '`/metrics` needs an admin key and its per-key series name the keys; `false`: public, every key shown as `hidden`',
    'KEYS_FILE': 'path of the keys file (YAML, per-key policy, reloaded without a restart: docs/tenants.md); instead of `API_KEYS`/`ADMIN_API_KEYS`, not with them; a bad file stops startup with one line naming the entry',
    'KEYS_RELOAD_SECONDS': 'how often the keys file is read for changes (a change applies within this plus one read)',
    'PRIORITY_BATCH_SHARE': 'the share of `MAX_NUM_SEQS` (not counting `ENGINE_QUEUE_DEPTH`) that keys of the `batch` class may hold together; the rest stays free for `interactive` and `standard` requests',
    'TTFT_SLO_MS_INTERACTIVE': 'time-to-first-token objective, ms, of `interactive` requests: the deadline (arrival + objective) by which one must have started; one the measured service rate does not predict to start within half the time to it is refused at once (503 `server_overloaded`, 429 when its key holds more than an equal share), and one still waiting at its deadline is dropped (503), never started late; a key\'s `ttft_slo_ms` (keys file) wins, a client\'s `x-slo-ttft-ms` header may only tighten it; unset: no deadline',
    'TTFT_SLO_MS_STANDARD': 'as `TTFT_SLO_MS_INTERACTIVE`, for `standard` requests',
    'TTFT_SLO_MS_BATCH': 'as `TTFT_SLO_MS_INTERACTIVE`, for `batch` requests',
    'GATEWAY_FAIRNESS_ID': 'with keys off, the `x-gateway-inference-fairness-id` header (up to 64 of `A-Z a-z 0-9 . _ : -`) names whom the fair queue counts a request against, with the per-key shares of the queue; ignored while keys are on',
    'PRIORITY_AGING_SECONDS': 'a queued request whose key has nothing running rises one priority class per this many seconds of waiting, so no class starves (`0`: never); in vLLM\'s queue every request ages so (docs/tenants.md)',
    'REQUIRE_API_KEYS': '`true`: startup stops when neither `API_KEYS` nor `KEYS_FILE` is set (the bentos and images set it; `make serve` does not)',
    'DEFAULT_RATE_LIMIT': 'requests per window per key (per client IP when auth is off); `0` = no limit',
    'RATE_LIMIT_WINDOW_MINUTES': 'the window; fractions allowed (`0.25` = 15 s)',
    'API_KEY_LIMITS': 'per-key overrides, `sk-a:200,sk-b:500`; every limit at least 1 (`0` used to mean "no limit" and now stops startup; to suspend a key, remove it from `API_KEYS`); a malformed value is reported without the value',
    'GLOBAL_RATE_LIMIT': 'requests per window over all callers together (`0`: off)',
    'TOKENS_PER_MINUTE_LIMIT': 'prompt + completion tokens per minute per key, reserved before the engine runs (prompt + `max_tokens` x sequences) and settled to the real count (`0`: off; a keys file may set its own)',
    'RATE_LIMIT_STORAGE_URI': '`redis://host:port/db` shares the counters among replicas',
    'RATE_LIMIT_FAIL_OPEN': 'when the storage is unreachable or slow: keep serving, each replica limiting alone to its share of each request limit (`true`), or refuse with 503 (`false`); the storage is retried every 2 s and an outage is logged once (docs/operations.md)',
    'RATE_LIMIT_REPLICAS': 'optional, no longer needed: the replicas count themselves by heartbeat in `RATE_LIMIT_STORAGE_URI`, and while it is down each admits its share of the last count seen (the shares add up to the limit; docs/operations.md). When set: the least count assumed (the autoscaler\'s minimum), and what a replica started during an outage assumes (unset: 1, the whole limit)',
    'RATE_LIMIT_HEARTBEAT_SECONDS': 'how often each replica announces itself in the rate-limit storage and reads the live count; a replica silent for three heartbeats is no longer counted',
    'RATE_LIMIT_STORAGE_TIMEOUT': 'seconds before a storage call (connecting included) counts as failed: a request waits out at most one, for every shared store together (components/storage/); generous because a replica under CPU load answers late, and a call cut short fails open (tokens) or falls back to the local share (requests)',
    'MAX_QUEUE_SIZE': 'requests that may wait for engine capacity',
    'MAX_INFLIGHT_PER_KEY': 'sequences one API key may have in the engine at once; its further requests wait in the queue; a single request asking for more gets 400 `too_many_sequences`. Applies only with `API_KEYS`; unset means `MAX_NUM_SEQS` + `ENGINE_QUEUE_DEPTH`',
    'MAX_QUEUED_PER_KEY': 'requests one API key may have waiting (429 `concurrency_limit_exceeded` beyond). Applies only with `API_KEYS`; unset means `MAX_QUEUE_SIZE` / 2 (at least 1)',
    'QUEUE_TIMEOUT_SECONDS': 'longest wait in the queue, then 503 `server_overloaded` with `retry-after` (> 0: every wait is bounded)',
    'CORS_ORIGINS': 'allowed browser origins: `*` alone, or origins comma-separated (`*` mixed with origins stops startup)',
    'BREAKER_FAILURE_RATE': '% of failed calls in the window that opens the breaker',
    'BREAKER_WINDOW': 'calls in the sliding window',
    'BREAKER_MIN_CALLS': 'calls needed before the rate is judged',
    'BREAKER_OPEN_SECONDS': 'time open before half-open',
    'BREAKER_HALF_OPEN_CALLS': 'trial calls in half-open',
    'GRACEFUL_SHUTDOWN_TIMEOUT': 'seconds in-flight requests may run after SIGTERM',
    'REQUEST_TIMEOUT_SECONDS': 'generation time limit per request (`0` = none)',
    'STREAM_STALL_TIMEOUT_SECONDS': 'a client that reads nothing for this long (its socket full): the server stops writing, closes its side and aborts the engine request',
    'ENGINE_DEATH_EXIT_SECONDS': 'delay before the worker exits after engine death (`0` = never)',
    'ENGINE_WATCHDOG_INTERVAL': 'seconds between engine liveness checks',
    'READINESS_STRICT': '`/readyz` fails while the breaker is open',
    'ENABLE_REQUEST_TRACING': 'the per-request access-log lines',
    'OTLP_TRACES_ENDPOINT': "OTLP endpoint of one trace per request (the front door's spans and vLLM's, continuing `traceparent`); `grpc` `host:port`, or the full `…/v1/traces` URL with `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf`; unset: tracing off, at no cost",
    'TRACES_SAMPLE_RATIO': 'the share of requests traced (by trace id, whatever the parent asked)',
    'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL': '`grpc` or `http/protobuf`, for our exporter and vLLM\'s',
    'GPU_MONITOR_INTERVAL': 'seconds between NVML samples',
    'LOG_LEVEL': 'log level',
    'MAX_HEADER_BYTES': 'largest total of request headers, each counted as name + value + 4 bytes (431 beyond)',
    'BODY_READ_TIMEOUT_SECONDS': 'deadline for the whole request body (408 beyond)',
}


def render_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | dict) and not value:
        return "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_table() -> list[tuple[str, str, str, str]]:
    """(group, variable, default, meaning) for every setting, in the module's order."""
    rows = []
    for title, group in GROUPS:
        for info in group.model_fields.values():
            default = render_default(info.get_default(call_default_factory=True))
            rows.append((title, info.alias, default, DESCRIPTIONS[info.alias]))
    return rows


def reference() -> str:
    lines = [
        "# Settings reference",
        "",
        "Generated by `python -m harness.settings_reference` from `components/core/settings.py`; a unit test",
        "keeps it in step. Every setting is an environment variable, read once at startup. A value of the",
        "wrong type or out of range stops `bentoml serve` at once with exit status 2 and one line naming",
        "the variable (secret values are never echoed). A value only the engine can judge (an unknown",
        "`DTYPE`, `QUANTIZATION`, attention backend or tool-call parser, a `MODEL_ALIASES` target that is",
        "not the served model) fails the worker during startup instead: exit status 1, the reason in the log.",
    ]
    current = None
    for title, name, default, meaning in settings_table():
        if title != current:
            current = title
            lines += ["", f"## {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines.append(f"| `{name}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
