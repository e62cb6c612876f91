"""Every environment variable the service reads, as frozen, typed settings groups; reading
them (and exporting what vLLM reads from the environment) is components/core/settings_env.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_GPU_MODEL = "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"
DEFAULT_ALIASES = ("gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini", "text-davinci-003",
                   # what Anthropic clients and coding agents send by default
                   "claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-3-5-haiku-latest")


def split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _parse_pairs(value: Any, what: str, secret: bool = False) -> Any:
    """`a=b,c=d` (or `a:b`) into a dict; the last `=`/`:` splits, so keys may hold ':'.

    With `secret`, a bad item is not quoted back: it may be a key.
    """
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for position, item in enumerate(split_csv(value), 1):
        sep = "=" if "=" in item else ":"
        key, found, val = item.rpartition(sep)
        if not found or not key.strip() or not val.strip():
            got = f"item {position} is not (not shown: the value is secret)" if secret else f"got {item!r}"
            raise ValueError(f"expected {what} in every item, {got}")
        pairs[key.strip()] = val.strip()
    return pairs


class _Group(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)


class EngineSettings(_Group):
    model_path: str | None = Field(None, alias="MODEL_PATH")
    served_model_name: str | None = Field(None, alias="SERVED_MODEL_NAME")
    max_model_len: int = Field(4096, alias="MAX_MODEL_LEN", ge=16)
    gpu_memory_utilization: float = Field(0.9, alias="GPU_MEMORY_UTILIZATION", gt=0, le=1)
    max_num_seqs: int = Field(32, alias="MAX_NUM_SEQS", ge=1, le=4096)
    quantization: str | None = Field(None, alias="QUANTIZATION")
    dtype: str = Field("auto", alias="DTYPE")
    attention_backend: str = Field("AUTO", alias="VLLM_ATTENTION_BACKEND")
    swap_space: float | None = Field(None, alias="SWAP_SPACE", ge=0)
    enforce_eager: bool | None = Field(None, alias="ENFORCE_EAGER")
    # The step that starts a request runs without lower priority classes (engine_scheduler).
    first_step_alone: bool | None = Field(None, alias="PRIORITY_FIRST_STEP_ALONE")
    # vLLM's batch beyond MAX_NUM_SEQS that only a request outranking a running one may
    # start in (engine_scheduler; unset: a quarter of MAX_NUM_SEQS; 0: none).
    headroom: int | None = Field(None, alias="PRIORITY_HEADROOM", ge=0, le=4096)
    # The documented default; production points it at a mounted volume.
    cache_dir: str = Field("/tmp/vllm_cache", alias="VLLM_CACHE_DIR")  # noqa: S108
    hf_home: str | None = Field(None, alias="HF_HOME")
    cpu_kvcache_space_gib: int = Field(1, alias="VLLM_CPU_KVCACHE_SPACE", ge=1)
    # Cores kept free of the engine's compute threads (unset: engine.cpu_reserved_cores).
    cpu_reserved_cores: int | None = Field(None, alias="CPU_RESERVED_CORES", ge=0)
    tool_call_parser: str | None = Field(None, alias="TOOL_CALL_PARSER")
    cuda_visible_devices: str | None = Field(None, alias="CUDA_VISIBLE_DEVICES")
    trust_remote_code: bool = Field(False, alias="TRUST_REMOTE_CODE")
    warmup: bool = Field(True, alias="ENGINE_WARMUP")

    @field_validator("quantization", "tool_call_parser", "model_path", "served_model_name")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("attention_backend")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper() or "AUTO"


class ApiSettings(_Group):
    # NoDecode: the raw string reaches the validator instead of being parsed as JSON.
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, alias="MODEL_ALIASES"
    )
    max_request_bytes: int = Field(1_048_576, alias="MAX_REQUEST_BYTES", ge=1024)
    max_n: int = Field(8, alias="MAX_N", ge=1, le=128)
    max_tokens_limit: int = Field(0, alias="MAX_TOKENS_LIMIT", ge=0)
    max_messages: int = Field(512, alias="MAX_MESSAGES", ge=1)
    max_stop_sequences: int = Field(16, alias="MAX_STOP_SEQUENCES", ge=0)
    max_prompts: int = Field(16, alias="MAX_PROMPTS", ge=1)
    # Stored responses (previous_response_id): in Redis with the rate limits, else in memory.
    responses_ttl_s: int = Field(86_400, alias="RESPONSES_STORE_TTL_SECONDS", ge=1)
    responses_max_bytes: int = Field(67_108_864, alias="RESPONSES_STORE_MAX_BYTES", ge=1024)
    # Per API key (unset: an eighth of the store, and one record per KiB of that).
    responses_key_max_bytes: int | None = Field(None, alias="RESPONSES_STORE_KEY_MAX_BYTES", ge=1024)
    responses_key_max_records: int | None = Field(None, alias="RESPONSES_STORE_KEY_MAX_RECORDS", ge=1)
    # A structured-output grammar is built off the event loop within this, or refused (400).
    grammar_timeout_s: float = Field(2.0, alias="GRAMMAR_TIMEOUT_SECONDS", gt=0, le=60)

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        return _parse_pairs(value, "alias=model")


class AuthSettings(_Group):
    # Keys are secrets: repr=False keeps them out of reprs, logs and /debug/runtime.
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), alias="API_KEYS", repr=False)
    # Admin keys are API keys too; only they may read /debug/runtime while keys are on.
    admin_api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), alias="ADMIN_API_KEYS", repr=False)
    protect_metrics: bool = Field(False, alias="PROTECT_METRICS")
    # The keys file (components/edge/keys.py): per-key policy, reloaded without a restart.
    keys_file: str | None = Field(None, alias="KEYS_FILE")
    keys_reload_s: float = Field(0.5, alias="KEYS_RELOAD_SECONDS", gt=0, le=60)
    # Deployments set it (bentofile.yaml): no keys configured then stops startup.
    require_api_keys: bool = Field(False, alias="REQUIRE_API_KEYS")

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return tuple(split_csv(value)) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> AuthSettings:
        if self.keys_file and (self.api_keys or self.admin_api_keys):
            raise ValueError("set either KEYS_FILE or API_KEYS/ADMIN_API_KEYS, not both")
        if self.require_api_keys and not (self.keys_file or self.api_keys or self.admin_api_keys):
            raise ValueError("REQUIRE_API_KEYS is true but neither API_KEYS nor KEYS_FILE is set: "
                             "refusing to serve without authentication")
        return self


class LimitSettings(_Group):
    default_rate_limit: int = Field(60, alias="DEFAULT_RATE_LIMIT", ge=0)
    # Fractions allowed (0.25 = 15 s); the window is rounded to whole seconds.
    window_minutes: float = Field(1, alias="RATE_LIMIT_WINDOW_MINUTES", ge=1 / 60, le=1440)
    api_key_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, alias="API_KEY_LIMITS", repr=False
    )
    global_rate_limit: int = Field(0, alias="GLOBAL_RATE_LIMIT", ge=0)
    tokens_per_minute: int = Field(0, alias="TOKENS_PER_MINUTE_LIMIT", ge=0)
    storage_uri: str = Field("memory://", alias="RATE_LIMIT_STORAGE_URI", repr=False)
    # Stored responses (components/edge/response_store.py); unset: storage_uri.
    responses_store_uri: str | None = Field(None, alias="RESPONSES_STORE_URI", repr=False)
    fail_open: bool = Field(True, alias="RATE_LIMIT_FAIL_OPEN")
    # The least replica count assumed; the live count comes by heartbeat (components/edge/replicas.py).
    replicas: int | None = Field(None, alias="RATE_LIMIT_REPLICAS", ge=1, le=1000)
    heartbeat_s: float = Field(5.0, alias="RATE_LIMIT_HEARTBEAT_SECONDS", gt=0, le=60)
    # Generous: under CPU load an event loop lags, and a call cut short loses exactness.
    storage_timeout_s: float = Field(2.0, alias="RATE_LIMIT_STORAGE_TIMEOUT", gt=0, le=30)
    max_queue_size: int = Field(50, alias="MAX_QUEUE_SIZE", ge=0)
    # Sequences admitted beyond MAX_NUM_SEQS: rendered and waiting in vLLM's own scheduler
    # (unset: MAX_NUM_SEQS, one batch ready to refill the engine).
    engine_queue_depth: int | None = Field(None, alias="ENGINE_QUEUE_DEPTH", ge=0, le=4096)
    # Per API key: sequences in the engine at once (unset: all, MAX_NUM_SEQS + ENGINE_QUEUE_DEPTH), and
    # requests waiting (unset: half of MAX_QUEUE_SIZE, at least 1).
    max_inflight_per_key: int | None = Field(None, alias="MAX_INFLIGHT_PER_KEY", ge=1)
    max_queued_per_key: int | None = Field(None, alias="MAX_QUEUED_PER_KEY", ge=1)
    queue_timeout_s: float = Field(30, alias="QUEUE_TIMEOUT_SECONDS", gt=0)
    # Priority classes (keys file): the batch class's share of MAX_NUM_SEQS, and the wait
    # after which a queued request rises one class (0: never).
    priority_batch_share: float = Field(0.75, alias="PRIORITY_BATCH_SHARE", gt=0, le=1)
    priority_aging_s: float = Field(10, alias="PRIORITY_AGING_SECONDS", ge=0)
    # Time-to-first-token objectives by class, ms (unset: no deadline); a key's own
    # (keys file ttft_slo_ms) wins; a request past its predicted start is refused at once.
    ttft_slo_ms_interactive: int | None = Field(None, alias="TTFT_SLO_MS_INTERACTIVE", ge=1, le=3_600_000)
    ttft_slo_ms_standard: int | None = Field(None, alias="TTFT_SLO_MS_STANDARD", ge=1, le=3_600_000)
    ttft_slo_ms_batch: int | None = Field(None, alias="TTFT_SLO_MS_BATCH", ge=1, le=3_600_000)
    # With keys off: a gateway's x-gateway-inference-fairness-id header names the tenant.
    gateway_fairness_id: bool = Field(False, alias="GATEWAY_FAIRNESS_ID")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(("*",), alias="CORS_ORIGINS")

    @field_validator("api_key_limits", mode="before")
    @classmethod
    def _key_limits(cls, value: Any) -> Any:
        return _parse_pairs(value, "key:limit", secret=True)

    @field_validator("api_key_limits")
    @classmethod
    def _positive_limits(cls, value: dict[str, int]) -> dict[str, int]:
        # 0 once meant "no limit" here; a typo must not lift a key's limit. To suspend a
        # key, remove it from API_KEYS.
        if any(limit < 1 for limit in value.values()):
            raise ValueError("every limit must be at least 1 (0 no longer means unlimited)")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        origins = tuple(split_csv(value)) if isinstance(value, str) else value
        if isinstance(origins, tuple | list) and "*" in origins and len(origins) > 1:
            raise ValueError("CORS_ORIGINS is either '*' alone or a list of origins, not both")
        return origins

    @field_validator("storage_uri", "responses_store_uri")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("memory://", "redis://", "rediss://", "redis+unix://")):
            raise ValueError("expected memory:// or redis://host:port[/db]")
        return value


class ResilienceSettings(_Group):
    breaker_failure_rate: float = Field(50, alias="BREAKER_FAILURE_RATE", gt=0, le=100)
    breaker_window: int = Field(20, alias="BREAKER_WINDOW", ge=1, le=10_000)
    breaker_min_calls: int = Field(10, alias="BREAKER_MIN_CALLS", ge=1)
    breaker_open_seconds: float = Field(30, alias="BREAKER_OPEN_SECONDS", gt=0)
    breaker_half_open_calls: int = Field(3, alias="BREAKER_HALF_OPEN_CALLS", ge=1)
    graceful_shutdown_timeout: float = Field(30, alias="GRACEFUL_SHUTDOWN_TIMEOUT", ge=0)
    request_timeout: float = Field(600, alias="REQUEST_TIMEOUT_SECONDS", ge=0)
    stream_stall_timeout: float = Field(30, alias="STREAM_STALL_TIMEOUT_SECONDS", gt=0)
    engine_death_exit_seconds: float = Field(10, alias="ENGINE_DEATH_EXIT_SECONDS", ge=0)
    watchdog_interval: float = Field(1.0, alias="ENGINE_WATCHDOG_INTERVAL", gt=0, le=60)


class ServerSettings(_Group):
    readiness_strict: bool = Field(True, alias="READINESS_STRICT")
    request_tracing: bool = Field(True, alias="ENABLE_REQUEST_TRACING")
    otlp_traces_endpoint: str | None = Field(None, alias="OTLP_TRACES_ENDPOINT")
    traces_sample_ratio: float = Field(1.0, alias="TRACES_SAMPLE_RATIO", ge=0, le=1)
    # OpenTelemetry's own variable: vLLM's exporter reads it too, so both reach one collector.
    otlp_traces_protocol: Literal["grpc", "http/protobuf"] = Field("grpc", alias="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    gpu_monitor_interval: float = Field(5.0, alias="GPU_MONITOR_INTERVAL", gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    max_header_bytes: int = Field(16384, alias="MAX_HEADER_BYTES", ge=1024, le=1_048_576)
    body_read_timeout_s: float = Field(10, alias="BODY_READ_TIMEOUT_SECONDS", gt=0, le=3600)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    engine: EngineSettings
    api: ApiSettings
    auth: AuthSettings
    limits: LimitSettings
    resilience: ResilienceSettings
    server: ServerSettings
