"""The startup driver check (components/vllm_adapter/gpu_preflight.py) with NVML faked: an
old driver, a 6.1 device, no NVML, a CPU build; and the image runs it before the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.vllm_adapter import gpu_preflight as preflight

ROOT = Path(__file__).resolve().parents[2]


class FakeNvml:
    """The NVML calls the preflight makes, answering as configured."""

    class NVMLError_LibraryNotFound(Exception):  # noqa: N801 - pynvml's own name
        pass

    def __init__(self, driver: str | bytes = "580.82.07", cuda: int = 13000,
                 gpus: tuple[tuple[str, tuple[int, int]], ...] = (("Tesla T4", (7, 5)),),
                 missing: bool = False) -> None:
        self.driver, self.cuda, self.gpus, self.missing = driver, cuda, gpus, missing
        self.calls: list[str] = []

    def nvmlInit(self) -> None:  # noqa: N802
        self.calls.append("init")
        if self.missing:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str | bytes:  # noqa: N802
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return self.gpus[handle][0]

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:  # noqa: N802
        return self.gpus[handle][1]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return type("Memory", (), {"total": 15360 * 1024**2})()


def torch_dir(tmp_path: Path, cuda: str | None) -> Path:
    folder = tmp_path / "torch"
    folder.mkdir()
    value = "None" if cuda is None else repr(cuda)
    (folder / "version.py").write_text(f"__version__ = '2.13.0'\ncuda: Optional[str] = {value}\nhip = None\n")
    return folder


@pytest.fixture()
def cuda13(tmp_path: Path) -> Path:
    return torch_dir(tmp_path, "13.0")


def test_old_driver_gives_one_line_saying_what_is_needed(cuda13: Path) -> None:
    verdict = preflight.check(FakeNvml(driver="535.183.01", cuda=12020), torch_dir=cuda13)
    assert not verdict.ready
    assert verdict.line == "driver 535.183.01 supports CUDA 12.2; this image needs >= 580 for CUDA 13.0"


def test_a_6_1_device_is_refused_with_the_minimum(cuda13: Path) -> None:
    verdict = preflight.check(FakeNvml(gpus=(("Tesla P4", (6, 1)),)), torch_dir=cuda13)
    assert not verdict.ready
    assert verdict.line == ("GPU 0 (Tesla P4) has compute capability 6.1; this image needs >= 7.5 "
                            "(its kernels are built for sm_75 and newer)")


def test_old_driver_and_old_device_both_in_the_one_line(cuda13: Path) -> None:
    nvml = FakeNvml(driver=b"470.256.02", cuda=11040, gpus=(("Tesla T4", (7, 5)), ("Tesla P4", (6, 1))))
    verdict = preflight.check(nvml, torch_dir=cuda13)
    assert not verdict.ready and "\n" not in verdict.line
    assert verdict.line.startswith("driver 470.256.02 supports CUDA 11.4; this image needs >= 580 for CUDA 13.0; ")
    assert "GPU 1 (Tesla P4) has compute capability 6.1" in verdict.line and "GPU 0" not in verdict.line
    assert nvml.calls == ["init", "shutdown"]


def test_a_t4_on_a_580_driver_is_ready(cuda13: Path) -> None:
    verdict = preflight.check(FakeNvml(), torch_dir=cuda13)
    assert verdict.ready
    assert verdict.line == "driver 580.82.07 (CUDA 13.0), GPU 0 Tesla T4 (7.5, 15360 MiB): ready for CUDA 13.0"


def test_a_branch_below_580_is_refused_even_if_it_claims_cuda_13(cuda13: Path) -> None:
    assert not preflight.check(FakeNvml(driver="575.57.08", cuda=13000), torch_dir=cuda13).ready


def test_no_nvml_library_on_a_cuda_build_is_refused(cuda13: Path) -> None:
    verdict = preflight.check(FakeNvml(missing=True), torch_dir=cuda13)
    assert not verdict.ready
    assert verdict.line == ("no NVIDIA GPU usable through NVML (NVMLError_LibraryNotFound); this image needs "
                            ">= 580 for CUDA 13.0 and a GPU of compute capability >= 7.5")


def test_a_cpu_build_asks_nothing_of_nvml(tmp_path: Path) -> None:
    nvml = FakeNvml(missing=True)
    verdict = preflight.check(nvml, torch_dir=torch_dir(tmp_path, None))
    assert verdict.ready and nvml.calls == []


def test_require_ready_raises_with_the_line(cuda13: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "bundled_cuda", lambda torch_dir=None: "13.0")
    with pytest.raises(preflight.GpuNotReady) as raised:
        preflight.require_ready(FakeNvml(driver="535.183.01", cuda=12020))
    assert str(raised.value) == "driver 535.183.01 supports CUDA 12.2; this image needs >= 580 for CUDA 13.0"


def test_the_module_runs_without_torch_or_vllm_imports() -> None:
    # This venv's torch is a CPU build: the entrypoint step passes in one line.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "components.vllm_adapter.gpu_preflight"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "GPU preflight: torch is a CPU build: no GPU to check\n"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "vllm" not in imported


def test_the_image_runs_the_preflight_before_the_server() -> None:
    template = (ROOT / "deploy/bento/Dockerfile.template").read_text()
    entrypoint = next(line for line in template.splitlines() if line.startswith("ENTRYPOINT"))
    step = entrypoint.index("python -m components.vllm_adapter.gpu_preflight")
    assert step < entrypoint.index("exec {{ bento__entrypoint }}")
    assert "&&" in entrypoint[step:]  # the server starts only when the preflight passed


def test_the_engine_start_runs_the_preflight_first() -> None:
    source = (ROOT / "components/vllm_adapter/engine.py").read_text()
    start = source[source.index("async def start_engine"):]
    assert start.index("gpu_preflight.require_ready()") < start.index("AsyncLLM.from_engine_args")
