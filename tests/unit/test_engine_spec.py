from __future__ import annotations

import json

import pytest

from components.vllm_adapter import bundled_model
from components.vllm_adapter.engine_spec import default_tool_parser, resolve_spec
from components.api.openai_app import build_aliases
from components.core.priority import FIRST_STEP_CONFIG, HEADROOM_CONFIG
from components.core.settings import DEFAULT_GPU_MODEL, EngineSettings


def engine_settings(**env: str) -> EngineSettings:
    return EngineSettings(**env)  # type: ignore[arg-type]


def test_cpu_without_model_path_serves_bundled_model_eagerly() -> None:
    spec = resolve_spec(engine_settings(), gpu_count=0)
    assert spec.served_name == bundled_model.SERVED_NAME
    assert spec.model.endswith(f"{bundled_model.SERVED_NAME}-v{bundled_model.FORMAT_VERSION}")
    assert "--enforce-eager" in spec.cli_args
    assert "--gpu-memory-utilization" not in spec.cli_args
    assert "bundled" in spec.reason


def test_gpu_without_model_path_serves_mistral_awq_with_cuda_graphs() -> None:
    spec = resolve_spec(engine_settings(), gpu_count=1)
    assert spec.model == DEFAULT_GPU_MODEL
    args = spec.cli_args
    assert args[args.index("--quantization") + 1] == "awq"
    assert "--enforce-eager" not in args
    assert args[args.index("--tool-call-parser") + 1] == "mistral"


def test_model_path_wins_and_settings_reach_the_args() -> None:
    spec = resolve_spec(
        engine_settings(MODEL_PATH="/models/x", MAX_MODEL_LEN="2048", MAX_NUM_SEQS="4", VLLM_ATTENTION_BACKEND="triton_attn"),
        gpu_count=0,
    )
    args = spec.cli_args
    assert spec.model == "/models/x" and spec.served_name == "/models/x"
    assert args[args.index("--max-model-len") + 1] == "2048"
    # vLLM's batch is MAX_NUM_SEQS plus the headroom (a quarter); raw vLLM compared gets MAX_NUM_SEQS.
    assert args[args.index("--max-num-seqs") + 1] == "5"
    assert spec.stock_args[spec.stock_args.index("--max-num-seqs") + 1] == "4"
    assert "--scheduler-cls" not in spec.stock_args and "--additional-config" not in spec.stock_args
    assert args[args.index("--attention-backend") + 1] == "TRITON_ATTN"


@pytest.mark.parametrize(("env", "gpus", "on"), [({}, 0, True), ({}, 1, False),
                                                ({"PRIORITY_FIRST_STEP_ALONE": "false"}, 0, False),
                                                ({"PRIORITY_FIRST_STEP_ALONE": "true"}, 1, True)])
def test_the_first_step_rule_is_on_for_cpus_by_default(env: dict[str, str], gpus: int, on: bool) -> None:
    args = resolve_spec(engine_settings(**env), gpu_count=gpus).cli_args
    assert args[args.index("--scheduling-policy") + 1] == "priority"
    assert args[args.index("--scheduler-cls") + 1] == "components.vllm_adapter.engine_scheduler.class_first_scheduler"
    assert json.loads(args[args.index("--additional-config") + 1])[FIRST_STEP_CONFIG] is on


@pytest.mark.parametrize(("env", "headroom", "scheduler"), [({}, 8, True), ({"PRIORITY_HEADROOM": "3"}, 3, True),
                                                            ({"PRIORITY_HEADROOM": "0"}, 0, True),
                                                            ({"PRIORITY_HEADROOM": "0",
                                                              "PRIORITY_FIRST_STEP_ALONE": "false"}, 0, False)])
def test_the_headroom_widens_vllms_batch_only(env: dict[str, str], headroom: int, scheduler: bool) -> None:
    spec = resolve_spec(engine_settings(**env), gpu_count=0)
    args = spec.cli_args
    assert args[args.index("--max-num-seqs") + 1] == str(32 + headroom)
    assert ("--scheduler-cls" in args) is scheduler
    if scheduler:
        assert json.loads(args[args.index("--additional-config") + 1])[HEADROOM_CONFIG] == headroom


def test_sdpa_backend_is_left_to_vllm() -> None:
    assert "--attention-backend" not in resolve_spec(engine_settings(VLLM_ATTENTION_BACKEND="SDPA"), 1).cli_args


@pytest.mark.parametrize(
    ("model", "parser"),
    [("TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "mistral"), ("Qwen/Qwen2.5-7B", "hermes"), ("smollm2", "hermes"), ("facebook/opt-125m", None)],
)
def test_default_tool_parser(model: str, parser: str | None) -> None:
    assert default_tool_parser(model) == parser


def test_tool_parser_none_disables() -> None:
    assert resolve_spec(engine_settings(TOOL_CALL_PARSER="none"), 1).tool_call_parser is None


def test_aliases_default_and_reject_unknown_targets() -> None:
    aliases = build_aliases("m", {"my-alias": "m"})
    assert aliases["gpt-4"] == "m" and aliases["my-alias"] == "m"
    with pytest.raises(ValueError):
        build_aliases("m", {"gpt-4": "other"})


def test_engine_args_parse_with_vllms_own_parser() -> None:
    from components.vllm_adapter.engine import parse_engine_args

    args = parse_engine_args(resolve_spec(engine_settings(MAX_NUM_SEQS="4"), 0))
    assert args.max_num_seqs == 4 + 1 and args.enforce_eager is True  # with the headroom
    assert args.additional_config == {HEADROOM_CONFIG: 1, FIRST_STEP_CONFIG: True}


AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def dtype_of(spec) -> str:  # type: ignore[no-untyped-def]
    return spec.cli_args[spec.cli_args.index("--dtype") + 1]


def test_auto_dtype_on_cpu_is_float32_without_native_bf16() -> None:
    spec = resolve_spec(engine_settings(), gpu_count=0, cpu_flags=AVX2_ONLY)
    assert dtype_of(spec) == "float32"
    assert "no native bfloat16" in spec.dtype_reason


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_dtype_on_cpu_is_bfloat16_with_native_bf16(flag: str) -> None:
    spec = resolve_spec(engine_settings(), gpu_count=0, cpu_flags=AVX2_ONLY | {flag})
    assert dtype_of(spec) == "bfloat16"
    assert flag in spec.dtype_reason
    assert dtype_of(resolve_spec(engine_settings(), gpu_count=0, cpu_flags=SAPPHIRE_RAPIDS)) == "bfloat16"


def test_explicit_dtype_wins_and_gpu_keeps_auto() -> None:
    assert dtype_of(resolve_spec(engine_settings(DTYPE="bfloat16"), gpu_count=0, cpu_flags=AVX2_ONLY)) == "bfloat16"
    assert dtype_of(resolve_spec(engine_settings(DTYPE="float32"), gpu_count=0, cpu_flags=SAPPHIRE_RAPIDS)) == "float32"
    assert dtype_of(resolve_spec(engine_settings(), gpu_count=1, cpu_flags=AVX2_ONLY)) == "auto"


def test_host_cpu_flags_reads_proc_cpuinfo_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    from components.core.host import host_cpu_flags

    assert host_cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16"}
    assert host_cpu_flags(str(tmp_path / "missing")) == frozenset()


def reserved_of(spec) -> str:  # type: ignore[no-untyped-def]
    return spec.engine_env["VLLM_CPU_NUM_OF_RESERVED_CPU"]


def test_cpu_threads_use_every_core_on_small_hosts_and_keep_vllms_default_on_big_ones() -> None:
    assert reserved_of(resolve_spec(engine_settings(), gpu_count=0, cpu_cores=2)) == "0"
    assert reserved_of(resolve_spec(engine_settings(), gpu_count=0, cpu_cores=1)) == "0"
    big = resolve_spec(engine_settings(), gpu_count=0, cpu_cores=32)
    assert reserved_of(big) == "1" and "31 compute thread(s)" in big.threads_reason
    assert resolve_spec(engine_settings(), gpu_count=1, cpu_cores=2).engine_env == {}


def test_cpu_engine_runs_uncompilable_functions_eagerly() -> None:
    # Without a C++ compiler (our CPU image) inductor fails; that must not kill the engine.
    assert resolve_spec(engine_settings(), gpu_count=0, cpu_cores=2).engine_env["TORCHDYNAMO_SUPPRESS_ERRORS"] == "1"


def test_explicit_reserved_cores_win_but_leave_one_core_to_compute() -> None:
    spec = resolve_spec(engine_settings(CPU_RESERVED_CORES="1"), gpu_count=0, cpu_cores=2)
    assert reserved_of(spec) == "1" and "CPU_RESERVED_CORES is set" in spec.threads_reason
    lowered = resolve_spec(engine_settings(CPU_RESERVED_CORES="4"), gpu_count=0, cpu_cores=2)
    assert reserved_of(lowered) == "1" and "lowered from 4" in lowered.threads_reason
