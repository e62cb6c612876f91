"""The bundled model on this CPU under each candidate engine configuration, one run.

    .venv/bin/python benchmarks/cpu_tuning.py [--only NAME,...] [--prompts 32]

Each candidate is a real `bentoml serve` of this service with its own settings (dtype,
cores kept free of the engine's compute threads, eager or compiled), started from
nothing, timed to ready, then driven with vLLM's own benchmark client at concurrency 1
and 16 (random dataset, --ignore-eos, fixed lengths). The compiled candidate starts once
with an empty compile cache and once more with the cache it left. Writes
docs/benchmarks/cpu.json, cpu.md and cpu.png with the host's CPU model and flags.
Loopback only; every run is bounded by its prompt count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare import KEY, bench  # noqa: E402
from components.core.host import host_cpu_flags  # noqa: E402
from components.vllm_adapter.bundled_model import ensure_converted  # noqa: E402
from components.vllm_adapter.engine_spec import cpu_dtype, cpu_reserved_cores  # noqa: E402
from harness.server import host_cpu, start_server  # noqa: E402

EAGER = {"ENFORCE_EAGER": "true"}
# (name, service settings). "auto" sets nothing: what a user gets by default.
CANDIDATES: list[tuple[str, dict[str, str]]] = [
    ("bfloat16, 1 reserved, eager (vLLM's defaults)", {**EAGER, "DTYPE": "bfloat16", "CPU_RESERVED_CORES": "1"}),
    ("float32, 1 reserved, eager", {**EAGER, "DTYPE": "float32", "CPU_RESERVED_CORES": "1"}),
    ("float32, 0 reserved, eager", {**EAGER, "DTYPE": "float32", "CPU_RESERVED_CORES": "0"}),
    ("auto", {}),
    ("auto, compiled, cold cache", {"ENFORCE_EAGER": "false"}),
    ("auto, compiled, warm cache", {"ENFORCE_EAGER": "false"}),
]


def run_candidate(name: str, env: dict[str, str], cache_dir: Path, logs: Path, model_dir: str,
                  prompts: int) -> dict[str, Any]:
    full_env = {"API_KEYS": KEY, "ADMIN_API_KEYS": KEY, "DEFAULT_RATE_LIMIT": "1000000", "MAX_QUEUE_SIZE": "100",
                "QUEUE_TIMEOUT_SECONDS": "3600", "VLLM_CACHE_DIR": str(cache_dir), **env}
    slug = "".join(c if c.isalnum() else "-" for c in name)
    started = time.monotonic()
    server = start_server(logs, env=full_env, name=slug)
    try:
        server.wait_ready(timeout=900)
        startup_s = time.monotonic() - started
        debug = server_debug(server.url)
        result: dict[str, Any] = {"name": name, "settings": env, "startup_s": round(startup_s, 1),
                                  "engine_args": debug.get("engine_args"), "model": debug.get("model")}
        bench(server.url, model_dir, 2, 4, 128, 16)  # warm the server's first requests
        for concurrency, count in ((1, max(4, prompts // 4)), (16, prompts)):
            result[f"c{concurrency}"] = bench(server.url, model_dir, concurrency, count, 128, 64)
        print(json.dumps(result), flush=True)
        return result
    finally:
        server.stop()


def server_debug(url: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(f"{url}/debug/runtime", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    return response.json() if response.status_code == 200 else {}


def write_outputs(results: list[dict[str, Any]], machine: dict[str, Any], auto: dict[str, str], out: Path) -> None:
    (out / "cpu.json").write_text(json.dumps({"machine": machine, "auto_choice": auto, "candidates": results},
                                             indent=2) + "\n")
    lines = [
        f"Machine: {machine['description']}. Bundled model (SmolLM2-135M), 128 prompt tokens, 64 output tokens, "
        "vLLM's benchmark client against `bentoml serve`.",
        f"`auto` chose: dtype {auto['dtype']} ({auto['dtype_reason']}); {auto['threads_reason']}.",
        "",
        "| candidate | startup s | TTFT p50 ms c=1 | output tok/s c=1 | output tok/s c=16 | TTFT p50 ms c=16 "
        "| TPOT p50 ms c=16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c1, c16 = r["c1"], r["c16"]
        lines.append(f"| {r['name']} | {r['startup_s']} | {c1['median_ttft_ms']:.0f} | {c1['output_throughput']:.1f} | "
                     f"{c16['output_throughput']:.1f} | {c16['median_ttft_ms']:.0f} | {c16['median_tpot_ms']:.0f} |")
    (out / "cpu.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.barh(names, [r["c1"]["median_ttft_ms"] for r in results])
    a.set(xlabel="ms", title="TTFT p50, concurrency 1 (lower is better)")
    b.barh(names, [r["c16"]["output_throughput"] for r in results])
    b.set(xlabel="output tokens/s", title="Throughput, concurrency 16 (higher is better)")
    b.set_yticklabels([])
    fig.suptitle(machine["description"], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="candidate names separated by ; (default: all)")
    parser.add_argument("--prompts", type=int, default=32, help="at concurrency 16 (concurrency 1 uses a quarter)")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks"))
    parser.add_argument("--append", action="store_true",
                        help="keep the other candidates already in cpu.json (same host), replace these")
    options = parser.parse_args()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {n.strip() for n in options.only.split(";") if n.strip()}
    chosen = [(n, e) for n, e in CANDIDATES if not wanted or n in wanted]

    cpu = host_cpu()
    cores = len(os.sched_getaffinity(0))
    dtype, dtype_reason = cpu_dtype(host_cpu_flags())
    reserved, threads_reason = cpu_reserved_cores(cores)
    auto = {"dtype": dtype, "dtype_reason": dtype_reason, "reserved_cores": reserved,
            "threads_reason": f"{cores - reserved} compute thread(s), {reserved} reserved: {threads_reason}"}
    machine = {"cpu_model": cpu["model"], "flags": cpu["flags"], "cores": cores, "arch": platform.machine(),
               "python": platform.python_version(),
               "description": f"{cpu['model']} ({', '.join(cpu['flags'])}), {cores} cores, no GPU"}

    work = Path(tempfile.mkdtemp(prefix="llm-cpu-tuning-"))
    logs = work / "logs"
    logs.mkdir()
    # One cache folder per run of this script: the bundled model converted once, and the
    # compiled candidates' cache starting empty ("cold") then reused ("warm").
    cache_dir = work / "cache"
    model_dir = str(ensure_converted(str(cache_dir)))
    print(f"work folder {work}; auto: {auto}", flush=True)
    results = []
    try:
        for name, env in chosen:
            results.append(run_candidate(name, env, cache_dir, logs, model_dir, options.prompts))
    finally:
        shutil.rmtree(cache_dir / "compile", ignore_errors=True)
    if options.append and (out / "cpu.json").is_file():
        kept = json.loads((out / "cpu.json").read_text())
        if kept["machine"]["description"] != machine["description"]:
            raise SystemExit("cpu.json was measured on another host: run without --append")
        mine = {r["name"]: r for r in kept["candidates"]} | {r["name"]: r for r in results}
        results = [mine[name] for name, _ in CANDIDATES if name in mine]
    write_outputs(results, machine, auto, out)
    print((out / "cpu.md").read_text())


if __name__ == "__main__":
    main()
