"""`make gpu-check`: the first thing to run on a machine with an NVIDIA GPU (a T4 above all).

    python3 -m harness.gpu_check [--venv .venv-gpu] [--skip-bench]

1. Refuses in one line, before installing anything, where no NVIDIA GPU answers (`nvidia-smi`).
2. Installs requirements/gpu.lock as locked into its own venv (the CUDA build; .venv is the
   CPU one), with pytest, and goes on inside it.
3. The startup driver check (components/vllm_adapter/gpu_preflight.py); stops on its line.
4. The API conformance subset (`pytest -m gpu`, tests/integration/test_gpu_conformance.py)
   against the service started with the GPU bento's settings (bentofile.yaml `envs`).
5. This service's measurements against raw vLLM's (benchmarks/compare.py's client), one server
   at a time (two engines do not fit one 16 GB card), and the knee (benchmarks/knee.py's levels).
6. Writes docs/benchmarks/gpu-<device>.json: device, driver, CUDA, each stage's outcome, figures.
Send that file back (docs/deployment.md, "GPU nodes"). Loopback only; every run is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-gpu-check-not-secret"
# Container paths in the bento's envs, and what they become on the machine running the check.
LOCAL_PATHS = {"HF_HOME": "huggingface", "VLLM_CACHE_DIR": "vllm"}
DROP = ("BENTOML_CONFIG",)  # the harness's server sets its own


def gpus_from_nvidia_smi(output: str) -> list[dict[str, str]]:
    rows = [line.split(", ") for line in output.strip().splitlines() if line.count(", ") >= 3]
    return [{"name": r[0], "driver": r[1], "capability": r[2], "memory_mib": r[3].split()[0]} for r in rows]


def find_gpus() -> tuple[list[dict[str, str]], str]:
    """The GPUs nvidia-smi reports, or none and why."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi not found"
    query = "--query-gpu=name,driver_version,compute_cap,memory.total"
    command = [smi, query, "--format=csv,noheader"]  # nvidia-smi from PATH, fixed arguments
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    gpus = gpus_from_nvidia_smi(result.stdout) if result.returncode == 0 else []
    return gpus, "" if gpus else f"nvidia-smi found no GPU ({(result.stderr or result.stdout).strip()[:120]})"


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-") or "gpu"


def bento_service_env(cache: Path) -> dict[str, str]:
    """The GPU bento's settings for a server on this machine: its container paths moved
    under `cache`, a key of this check's own."""
    import yaml

    envs = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["envs"]
    env = {item["name"]: str(item["value"]) for item in envs if item["name"] not in DROP}
    env |= {name: str(cache / sub) for name, sub in LOCAL_PATHS.items() if name in env}
    return env | {"API_KEYS": KEY, "DEFAULT_RATE_LIMIT": "1000000", "MAX_QUEUE_SIZE": "200",
                  "QUEUE_TIMEOUT_SECONDS": "3600"}


def install(venv: Path) -> Path:
    uv = shutil.which("uv") or str(ROOT / ".venv-uv" / "bin" / "uv")
    if not Path(uv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROOT / ".venv-uv")], check=True)  # noqa: S603
        subprocess.run([str(ROOT / ".venv-uv/bin/pip"), "install", "-q", "uv"], check=True)  # noqa: S603
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    lock = ROOT / "requirements" / "gpu.lock"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        pytest_pin = re.search(r"^pytest==\S+", (ROOT / "requirements" / "cpu.lock").read_text(), re.MULTILINE)
        for command in ([uv, "venv", "-q", "--allow-existing", "--python", "3.11", str(venv)],
                        [uv, "pip", "sync", "-p", str(python), str(lock)],
                        [uv, "pip", "install", "-p", str(python), pytest_pin.group(0) if pytest_pin else "pytest"]):
            subprocess.run(command, check=True, cwd=ROOT)  # noqa: S603 - uv, fixed arguments
        marker.touch()
    return python


def conformance(python: Path, log: Path) -> dict[str, Any]:
    command = [str(python), "-m", "pytest", "-m", "gpu", "tests/integration/test_gpu_conformance.py", "-q",
               "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    log.write_text(result.stdout + result.stderr)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    return {"exit_code": result.returncode, "summary": summary, "log": str(log)}


def measure(spec_env: dict[str, str], logs: Path, levels: list[int], compare_levels: list[int]) -> dict[str, Any]:
    """The service at every level (the knee), then raw vLLM with the same engine arguments
    at the compare levels: one engine on the card at a time."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import bench, start_raw_vllm  # type: ignore[import-not-found]
    from knee import KNEE_SHARE  # type: ignore[import-not-found]

    from components.core.settings import EngineSettings
    from components.vllm_adapter.engine_spec import resolve_spec
    from harness.server import start_server

    os.environ.update({k: v for k, v in spec_env.items() if k in LOCAL_PATHS})
    spec = resolve_spec(EngineSettings(**spec_env), gpu_count=1, drain_seconds=30)  # type: ignore[arg-type]
    runs: list[dict[str, Any]] = []

    def drive(server: str, url: str, concurrencies: list[int]) -> None:
        for c in concurrencies:  # warm-up at each level first, as compare.py does
            bench(url, spec.model, c, max(8, c), 128, 64, model=spec.served_name)
        for c in concurrencies:
            result = bench(url, spec.model, c, max(16, 2 * c), 128, 64, model=spec.served_name)
            runs.append({"server": server, "concurrency": c, **result})
            print(json.dumps(runs[-1]), flush=True)

    service = start_server(logs, env=spec_env, name="gpu-service")
    started = time.monotonic()
    try:
        service.wait_ready(timeout=3600)  # the first start downloads about 4 GB of weights
        ready_s = round(time.monotonic() - started, 1)
        drive("service", service.url, levels)
    finally:
        service.stop()
    raw, raw_url = start_raw_vllm(spec.stock_args, spec.engine_env, logs / "vllm.log")
    try:
        drive("vllm", raw_url, compare_levels)
    finally:
        raw.terminate()
        raw.wait(120)
    service_runs = [r for r in runs if r["server"] == "service"]
    best = max(r["output_throughput"] for r in service_runs)
    knee = min(r["concurrency"] for r in service_runs if r["output_throughput"] >= KNEE_SHARE * best)
    return {"engine_args": spec.cli_args, "service_ready_s": ready_s, "knee_share": KNEE_SHARE,
            "knee_concurrency": knee, "best_output_tok_s": round(best, 1), "runs": runs}


def run_inside(options: argparse.Namespace, gpus: list[dict[str, str]]) -> int:
    from components.vllm_adapter import gpu_preflight

    logs = Path(options.logs)
    logs.mkdir(parents=True, exist_ok=True)
    verdict = gpu_preflight.check()
    found = verdict.found
    record: dict[str, Any] = {
        "device": gpus[0]["name"], "gpus": gpus, "driver": found.driver,
        "driver_cuda": ".".join(map(str, found.driver_cuda)) if found.driver_cuda else None,
        "bundled_cuda": verdict.cuda, "preflight": {"ready": verdict.ready, "line": verdict.line},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "docs" / "benchmarks" / f"gpu-{device_slug(gpus[0]['name'])}.json"
    try:
        if not verdict.ready:
            print(f"gpu-check: preflight failed: {verdict.line}", file=sys.stderr)
            return 1
        env = bento_service_env(logs / "cache")
        os.environ["GPU_CHECK_CACHE"] = str(logs / "cache")
        record["conformance"] = conformance(Path(sys.executable), logs / "conformance.log")
        if not options.skip_bench:
            record["benchmarks"] = measure(env, logs, [1, 2, 4, 8, 16, 24, 32, 48, 64], [1, 16, 32, 64])
        return 0 if record["conformance"]["exit_code"] == 0 else 1
    finally:
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"gpu-check: wrote {out.relative_to(ROOT)}: send it back (docs/deployment.md, 'GPU nodes')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv-gpu"))
    parser.add_argument("--logs", default="/tmp/gpu-check")  # noqa: S108 - this check's own logs
    parser.add_argument("--skip-bench", action="store_true", help="driver check and conformance only")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    gpus, why = find_gpus()
    if not gpus:
        print(f"gpu-check: no NVIDIA GPU here ({why}); run it on a machine with one, a T4 above all",
              file=sys.stderr)
        return 2
    if options.inside:
        return run_inside(options, gpus)
    python = install(Path(options.venv))
    command = [str(python), "-m", "harness.gpu_check", "--inside", "--logs", options.logs,
               *(["--skip-bench"] if options.skip_bench else [])]
    return subprocess.run(command, cwd=ROOT, check=False).returncode  # noqa: S603 - our own venv


if __name__ == "__main__":
    sys.exit(main())
