"""Before the engine starts: the NVIDIA driver and the GPUs, read through NVML, against what
this image's CUDA build needs. What is missing is said in one line (`driver 535.183.01
supports CUDA 12.2; this image needs >= 580 for CUDA 13.0`), never as a stack trace from
torch's first CUDA call. Imports neither torch nor vLLM: it runs in a fraction of a second.

    python -m components.vllm_adapter.gpu_preflight     # the image's entrypoint: exit 0 or 1
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# CUDA major -> the lowest driver branch that runs its runtime (NVIDIA's table for CUDA
# minor version compatibility: 13.x >= 580, 12.x >= 525, 11.x >= 450).
DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
# The lowest compute capability with machine code for every kernel family of the T4 path
# in the locked wheels (docs/benchmarks/gpu-kernels.json: sm_75; no PTX below sm_80 that a
# lower device could compile). tests/unit/test_kernel_inventory.py keeps the two equal.
MIN_CAPABILITY = (7, 5)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_mib: int


@dataclass(frozen=True)
class Found:
    """What NVML told, or why it told nothing."""

    driver: str | None = None
    driver_cuda: tuple[int, int] | None = None
    gpus: list[Gpu] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    ready: bool
    line: str
    cuda: str | None
    found: Found


class GpuNotReady(RuntimeError):
    """The driver or a GPU cannot run this image; the message is the one line to show."""


def bundled_cuda(torch_dir: Path | None = None) -> str | None:
    """The CUDA version torch was built with ("13.0"; None for a CPU build), from
    torch/version.py: importing torch takes seconds and would touch CUDA."""
    if torch_dir is None:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        torch_dir = Path(next(iter(spec.submodule_search_locations)))
    try:
        text = (torch_dir / "version.py").read_text()
    except OSError:
        return None
    match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([0-9.]+)['\"]", text, re.MULTILINE)
    return match.group(1) if match else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(nvml: Any) -> Found:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no library, no driver: the same answer
        return Found(error=type(exc).__name__)
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total // 1024**2
            gpus.append(Gpu(index, _text(nvml.nvmlDeviceGetName(handle)), (int(major), int(minor)), int(memory)))
        return Found(driver, (cuda // 1000, cuda % 1000 // 10), gpus)
    except Exception as exc:  # noqa: BLE001 - a driver that answers nothing usable
        return Found(error=f"{type(exc).__name__}: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - nothing left to release
            pass


def judge(cuda: str | None, found: Found) -> Verdict:
    """Whether this image's CUDA build can run on what NVML found, in one line."""
    if cuda is None:
        return Verdict(True, "torch is a CPU build: no GPU to check", cuda, found)
    major = int(cuda.split(".")[0])
    branch = DRIVER_FOR_CUDA.get(major, 0)
    need = f"this image needs >= {branch} for CUDA {cuda}"
    if found.error is not None or not found.gpus:
        why = found.error or "no GPU"
        return Verdict(False, f"no NVIDIA GPU usable through NVML ({why}); {need} and a GPU of compute "
                              f"capability >= {_version(MIN_CAPABILITY)}", cuda, found)
    problems = []
    driver_branch = int(found.driver.split(".")[0]) if found.driver and found.driver[0].isdigit() else 0
    driver_cuda = found.driver_cuda or (0, 0)
    if driver_cuda[0] < major or driver_branch < branch:
        problems.append(f"driver {found.driver} supports CUDA {_version(driver_cuda)}; {need}")
    low = [gpu for gpu in found.gpus if gpu.capability < MIN_CAPABILITY]
    problems += [f"GPU {gpu.index} ({gpu.name}) has compute capability {_version(gpu.capability)}; this image "
                 f"needs >= {_version(MIN_CAPABILITY)} (its kernels are built for sm_75 and newer)" for gpu in low]
    if problems:
        return Verdict(False, "; ".join(problems), cuda, found)
    devices = ", ".join(f"GPU {gpu.index} {gpu.name} ({_version(gpu.capability)}, {gpu.memory_mib} MiB)"
                        for gpu in found.gpus)
    return Verdict(True, f"driver {found.driver} (CUDA {_version(driver_cuda)}), {devices}: ready for CUDA {cuda}",
                   cuda, found)


def _version(pair: tuple[int, int]) -> str:
    return f"{pair[0]}.{pair[1]}"


def _load_nvml() -> ModuleType:
    import pynvml

    return pynvml


def check(nvml: Any = None, torch_dir: Path | None = None) -> Verdict:
    """The verdict for this host. Nothing is asked of NVML for a CPU build of torch."""
    cuda = bundled_cuda(torch_dir)
    if cuda is None:
        return judge(None, Found())
    try:
        nvml = nvml or _load_nvml()
    except ImportError:
        return judge(cuda, Found(error="nvidia-ml-py is not installed"))
    return judge(cuda, read_nvml(nvml))


def require_ready(nvml: Any = None) -> None:
    """For the engine's start: raises GpuNotReady, whose message is the one line."""
    verdict = check(nvml)
    if not verdict.ready:
        raise GpuNotReady(verdict.line)


def main() -> int:
    verdict = check()
    print(("GPU preflight: " if verdict.ready else "GPU preflight failed: ") + verdict.line,
          file=sys.stdout if verdict.ready else sys.stderr)
    return 0 if verdict.ready else 1


if __name__ == "__main__":
    sys.exit(main())
