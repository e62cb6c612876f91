"""Which GPU architectures the locked CUDA wheels carry machine code and PTX for, whether
every kernel family of the T4 path has code a compute capability 7.5 device can run, and
which CUDA runtime they link:

    make kernel-inventory   # downloads the wheels pinned in requirements/gpu.lock (--no-deps,
                            # about 1.5 GB, into a temp dir) and writes docs/benchmarks/gpu-kernels.json
    .venv/bin/python -m harness.kernel_inventory --check    # the committed file, no download

The listing is NVIDIA's cuobjdump (`--list-elf`, `--list-ptx`, and the function names of each
architecture's ELF through `--dump-resource-usage`), from its PyPI package. The families, and
what counts as their code, are defined here, not in the JSON: `check` re-applies them to the
recorded names, so an inventory filtered to sm_80 (or made up) fails, and so does one
recorded for another requirements/gpu.lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "gpu.lock"
RECORD = ROOT / "docs" / "benchmarks" / "gpu-kernels.json"
TARGET = 75  # the T4: compute capability 7.5


@dataclass(frozen=True)
class Family:
    name: str
    obj: str  # the shared object (path inside its wheel) that holds it
    pattern: str  # a regular expression over the recorded function keys
    why: str


FAMILIES = (
    Family("awq_marlin_gemm", "vllm/_C_stable_libtorch.abi3.so",
           r"^marlin::Marlin<float16,uint4,float16,float16>$",
           "AWQ 4-bit GEMM: vLLM picks MarlinLinearKernel on sm75 (harness/sm75_config.py)"),
    Family("awq_marlin_repack", "vllm/_C_stable_libtorch.abi3.so", r"^marlin::awq_marlin_repack_kernel$",
           "AWQ weights repacked for Marlin at load"),
    Family("awq_gemm", "vllm/_C_stable_libtorch.abi3.so", r"^vllm::awq::gemm_forward_4bit_cuda_m16nXk32$",
           "plain AWQ GEMM: the fallback for a layer Marlin cannot tile"),
    Family("silu_and_mul", "vllm/_C_stable_libtorch.abi3.so", r"^vllm::act_and_mul_kernel$",
           "Mistral's MLP activation"),
    Family("rms_norm", "vllm/_C_stable_libtorch.abi3.so", r"^vllm::(fused_add_)?rms_norm_kernel$",
           "RMSNorm (eager mode; compiled mode generates it with Triton)"),
    Family("rotary_embedding", "vllm/_C_stable_libtorch.abi3.so", r"^vllm::rotary_embedding_kernel$", "RoPE"),
    Family("kv_cache_write_cuda", "vllm/_C_stable_libtorch.abi3.so", r"^vllm::reshape_and_cache_flash_kernel$",
           "paged KV cache write (TRITON_ATTN writes with Triton; this is the CUDA one)"),
    Family("softmax", "torch/lib/libtorch_cuda.so", r"cunn_SoftMaxForward", "sampling: probabilities, logprobs"),
    Family("topk_sort", "torch/lib/libtorch_cuda.so", r"^at::native::(sbtopk::gatherTopK|.*SortKVInPlace)$",
           "sampling: top-k, top-p"),
    Family("reduce", "torch/lib/libtorch_cuda.so", r"^at::native::reduce_kernel$", "argmax (greedy), max"),
    Family("elementwise", "torch/lib/libtorch_cuda.so", r"^at::native::vectorized_elementwise_kernel$",
           "temperature, penalties, exponential draws"),
    Family("scan", "torch/lib/libtorch_cuda.so", r"^at::native::tensor_kernel_scan_innermost_dim$", "top-p cumsum"),
    Family("index", "torch/lib/libtorch_cuda.so", r"^at::native::(indexSelect|indexFunc)\w*$",
           "embedding lookup, gathers"),
    Family("cublas_fp16_gemm", "nvidia/cu13/lib/libcublasLt.so.13", r"^turing_h1688gemm_",
           "fp16 GEMMs left unquantized (lm_head) on Turing tensor cores"),
)
WHEELS = ("torch", "vllm", "nvidia-cublas", "triton")
CUOBJDUMP = "nvidia-cuda-cuobjdump==13.5.37"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE))


def arch_number(arch: str) -> int:
    return int(re.sub(r"\D", "", arch.removeprefix("sm_")) or 0)


def family_hits(family: Family, inventory: dict[str, Any]) -> dict[str, int]:
    """Per architecture, how many recorded functions of the family's object match it."""
    keys = inventory.get("functions", {}).get(family.obj, {})
    return {arch: sum(count for key, count in found.items() if re.search(family.pattern, key))
            for arch, found in keys.items()}


def runnable_on(arch: str, ptx: bool, target: int = TARGET) -> bool:
    """Machine code runs on the same major at an equal or higher minor; PTX JITs upwards."""
    number = arch_number(arch)
    return number <= target if ptx else (number // 10 == target // 10 and number <= target)


def check(inventory: dict[str, Any], lock_text: str) -> list[str]:
    """What is wrong with an inventory for this lock; empty when the T4 path is covered."""
    problems = []
    if inventory.get("lock_sha256") != sha256(lock_text.encode()):
        problems.append("recorded for another requirements/gpu.lock: run `make kernel-inventory`")
    pins = lock_pins(lock_text)
    for name, wheel in inventory.get("wheels", {}).items():
        if pins.get(name) != wheel.get("version"):
            problems.append(f"{name} {wheel.get('version')} recorded, {pins.get(name)} locked")
    for family in FAMILIES:
        hits = family_hits(family, inventory)
        objects = {obj: info for wheel in inventory.get("wheels", {}).values()
                   for obj, info in wheel.get("objects", {}).items()}
        ptx = objects.get(family.obj, {}).get("ptx", {})
        code = [arch for arch, count in hits.items() if count and runnable_on(arch, ptx=False)]
        jit = [arch for arch, count in ptx.items() if count and runnable_on(arch, ptx=True)]
        if not code and not jit:
            problems.append(f"{family.name}: no sm_{TARGET} code or PTX a {TARGET // 10}.{TARGET % 10} device "
                            f"can JIT in {family.obj} (has {sorted(a for a, c in hits.items() if c)})")
    return problems


def lowest_capability(inventory: dict[str, Any]) -> int:
    """The lowest compute capability with code for every family (PTX counted)."""
    lowest = 0
    for family in FAMILIES:
        archs = [arch_number(arch) for arch, count in family_hits(family, inventory).items() if count]
        lowest = max(lowest, min(archs, default=10**3))
    return lowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the committed inventory, download nothing")
    parser.add_argument("--wheels", type=Path, help="a folder to keep the wheels in and reuse (default: a temp dir)")
    options = parser.parse_args(argv)
    if not options.check:
        from harness.kernel_listing import build

        with tempfile.TemporaryDirectory() as work:
            wheels = options.wheels or Path(work)
            wheels.mkdir(parents=True, exist_ok=True)
            inventory = build(wheels, LOCK.read_text(), keep_wheels=options.wheels is not None)
        RECORD.write_text(json.dumps(inventory, indent=1, sort_keys=True) + "\n")
    inventory = json.loads(RECORD.read_text())
    problems = check(inventory, LOCK.read_text())
    for problem in problems:
        print(f"kernel inventory: {problem}", file=sys.stderr)
    if not problems:
        print(f"kernel inventory: every T4 kernel family has sm_{TARGET} code "
              f"({len(FAMILIES)} families; lowest capability for all: {lowest_capability(inventory)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
