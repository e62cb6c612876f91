"""`make gpu-check` (harness/gpu_check.py) where there is no GPU: one line, a non-zero exit,
nothing installed; and the pure parts it runs on a GPU machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness.gpu_check import KEY, bento_service_env, device_slug, gpus_from_nvidia_smi

ROOT = Path(__file__).resolve().parents[2]


def bin_dir(tmp_path: Path, nvidia_smi: str | None) -> Path:
    """A PATH with python3 and make, and nvidia-smi only as given."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "python3").symlink_to(sys.executable)
    make = shutil.which("make")
    if make:
        (folder / "make").symlink_to(make)
    if nvidia_smi is not None:
        (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (folder / "nvidia-smi").chmod(0o755)
    return folder


def gpu_check(tmp_path: Path, nvidia_smi: str | None, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(bin_dir(tmp_path, nvidia_smi))}
    return subprocess.run(list(command) or ["python3", "-m", "harness.gpu_check", "--venv", str(tmp_path / "venv")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_no_nvidia_smi_is_refused_in_one_line(tmp_path: Path) -> None:
    result = gpu_check(tmp_path, None)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("gpu-check: no NVIDIA GPU here (nvidia-smi not found); run it on a machine with "
                             "one, a T4 above all\n")
    assert not (tmp_path / "venv").exists()  # nothing installed


def test_a_driver_that_answers_nothing_is_refused_in_one_line(tmp_path: Path) -> None:
    result = gpu_check(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                 "driver\"; exit 9")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("gpu-check: no NVIDIA GPU here (nvidia-smi found no GPU (NVIDIA-SMI has failed")


def test_make_gpu_check_refuses_too(tmp_path: Path) -> None:
    result = gpu_check(tmp_path, None, "make", "-s", "gpu-check")
    assert result.returncode != 0
    assert "gpu-check: no NVIDIA GPU here (nvidia-smi not found)" in result.stderr


def test_nvidia_smi_rows_and_the_device_name() -> None:
    gpus = gpus_from_nvidia_smi("Tesla T4, 580.82.07, 7.5, 15360 MiB\nNVIDIA A10G, 580.82.07, 8.6, 23028 MiB\n")
    assert gpus[0] == {"name": "Tesla T4", "driver": "580.82.07", "capability": "7.5", "memory_mib": "15360"}
    assert [device_slug(g["name"]) for g in gpus] == ["tesla-t4", "a10g"]


def test_the_service_gets_the_bento_settings_with_local_paths(tmp_path: Path) -> None:
    env = bento_service_env(tmp_path)
    assert env["MODEL_PATH"] == "TheBloke/Mistral-7B-Instruct-v0.2-AWQ" and env["DTYPE"] == "float16"
    assert env["QUANTIZATION"] == "awq" and env["ENFORCE_EAGER"] == "false"
    assert env["HF_HOME"] == str(tmp_path / "huggingface") and env["VLLM_CACHE_DIR"] == str(tmp_path / "vllm")
    assert "BENTOML_CONFIG" not in env and env["API_KEYS"] == KEY
