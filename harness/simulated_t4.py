"""A Tesla T4 as vLLM's own platform code sees it, on a machine without one: vLLM's
`NvmlCudaPlatform` runs unchanged over an NVML that answers like a T4, so every
capability check in vLLM's configuration code takes its sm75 branch.

What stands in for the GPU build, and why each is faithful:
- NVML: one device, "Tesla T4", compute capability (7, 5), 15360 MiB (what NVML reports for
  the 16 GB part). vLLM reads capability, name and memory through NVML only.
- The wheel's compiled extensions (`vllm._C_stable_libtorch`, flash-attention's `_vllm_fa2_C`
  and `_vllm_fa3_C`, ...) are empty modules: on a real T4 they import as well (a shared
  object loads whatever its architectures; only a launch needs sm_75 code, which
  harness/kernel_inventory.py checks). Their ops are placeholders that raise if called, so
  nothing here computes; their names are recorded. An op the wheel does not define (its
  schema is not among the `op_schemas` read from the wheel's shared objects,
  docs/benchmarks/gpu-kernels.json) is missing here too, as vLLM's `hasattr` probes expect.
- The four CUTLASS capability queries that configuration code calls answer False, as their
  C++ sources do below 8.9 (fp8), 9.0 (block fp8, grouped GEMM) and 10.0 (fp4); asked for a
  higher capability they raise instead of guessing.
- `torch.library.register_fake` on those namespaces keeps the function and registers
  nothing (there is no op to attach it to); fake kernels serve torch.compile's tracing,
  which never runs here.
- Triton's CUDA driver reports itself active and vLLM's version check sees "0.32.0" (the
  CUDA wheel's version; the CPU build's "+cpu" makes vLLM turn Triton off), as on the node.

Must run in a fresh process before anything imports vLLM's platform (`install()`).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

T4_NAME = "Tesla T4"
T4_CAPABILITY = (7, 5)
T4_TOTAL_BYTES = 15360 * 1024**2
# The compiled extension modules of the vllm 0.32.0 CUDA wheel that vLLM imports by name
# (the full list of shared objects is in docs/benchmarks/gpu-kernels.json).
EXTENSIONS = (
    "vllm._C_stable_libtorch",
    "vllm._moe_C_stable_libtorch",
    "vllm.vllm_flash_attn._vllm_fa2_C",
    "vllm.vllm_flash_attn._vllm_fa3_C",
)
OP_NAMESPACES = ("_C", "_C_cache_ops", "_C_custom_ar", "_moe_C", "_C_cuda_utils")
# Capability queries: name -> the lowest capability (major*10+minor) where the C++ says yes.
CAPABILITY_QUERIES = {
    "cutlass_scaled_mm_supports_fp8": 89,
    "cutlass_scaled_mm_supports_block_fp8": 90,
    "cutlass_scaled_mm_supports_fp4": 100,
    "cutlass_group_gemm_supported": 90,
}

ops_seen: set[str] = set()


class NVMLError(Exception):
    pass


def fake_nvml() -> types.ModuleType:
    """The functions of `pynvml` that vLLM's CUDA platform calls, answering as one T4."""
    nvml = types.ModuleType("pynvml")
    memory = types.SimpleNamespace(total=T4_TOTAL_BYTES, free=T4_TOTAL_BYTES - 300 * 1024**2,
                                   used=300 * 1024**2)
    functions: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda index: ("t4", index),
        "nvmlDeviceGetIndex": lambda handle: handle[1],
        "nvmlDeviceGetCudaComputeCapability": lambda handle: T4_CAPABILITY,
        "nvmlDeviceGetName": lambda handle: T4_NAME,
        "nvmlDeviceGetUUID": lambda handle: "GPU-00000000-0000-0000-0000-000000000075",
        "nvmlDeviceGetMemoryInfo": lambda handle: memory,
    }
    for name, function in functions.items():
        setattr(nvml, name, function)
    nvml.NVMLError = NVMLError  # type: ignore[attr-defined]
    return nvml


class _Placeholder:
    def __init__(self, qualified: str) -> None:
        self.qualified = qualified

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.qualified}: a CUDA kernel, not run in the sm75 simulation")

    def __getattr__(self, overload: str) -> Any:
        if overload.startswith("__"):
            raise AttributeError(overload)
        return self  # `.default` and other overloads: the same placeholder


class _SimulatedOps:
    """`torch.ops.<namespace>`: a placeholder per op the wheel defines, capability queries
    answered."""

    def __init__(self, namespace: str, defined: frozenset[str]) -> None:
        self._namespace = namespace
        self._defined = defined

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in self._defined:
            raise AttributeError(f"'_OpNamespace' '{self._namespace}' object has no attribute '{name}'")
        qualified = f"{self._namespace}.{name}"
        ops_seen.add(qualified)
        if name in CAPABILITY_QUERIES:
            return _capability_query(CAPABILITY_QUERIES[name], qualified)
        return _Placeholder(qualified)


def _capability_query(lowest_yes: int, qualified: str) -> Callable[[int], bool]:
    def query(capability: int) -> bool:
        if capability >= lowest_yes:
            raise RuntimeError(f"{qualified}({capability}) is not simulated")
        return False

    return query


def _register_fake(original: Callable[..., Any]) -> Callable[..., Any]:
    def register_fake(op: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(op, str) and op.split("::", 1)[0] in OP_NAMESPACES:
            return lambda function: function
        return original(op, *args, **kwargs)

    return register_fake


def install(defined_ops: frozenset[str]) -> None:
    """Make vLLM's current platform a CUDA platform on one T4. Call before any vLLM import
    that reads `current_platform`. `defined_ops`: the op names the CUDA wheel defines."""
    if "vllm.platforms.cuda" in sys.modules:
        raise RuntimeError("install() must run before vLLM's CUDA platform is imported")
    import torch
    import triton.backends
    import vllm.third_party

    nvml = fake_nvml()
    sys.modules["vllm.third_party.pynvml"] = nvml
    vllm.third_party.pynvml = nvml  # type: ignore[attr-defined]
    for name in EXTENSIONS:
        sys.modules[name] = types.ModuleType(name)
    for namespace in OP_NAMESPACES:
        setattr(torch.ops, namespace, _SimulatedOps(namespace, defined_ops | frozenset(CAPABILITY_QUERIES)))
    torch.library.register_fake = _register_fake(torch.library.register_fake)
    triton.backends.backends["nvidia"].driver.is_active = staticmethod(lambda: True)

    import vllm.platforms as platforms

    platforms.vllm_version_matches_substr = lambda substr: substr in "0.32.0"  # type: ignore[assignment]
    from vllm.platforms.cuda import CudaPlatform, NvmlCudaPlatform

    if CudaPlatform is not NvmlCudaPlatform:
        raise RuntimeError("vLLM did not take its NVML platform: the fake NVML was not used")
    platform = CudaPlatform()
    platforms._current_platform = platform  # type: ignore[attr-defined]
    platforms.current_platform = platform
