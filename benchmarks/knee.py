"""One replica's throughput against concurrency: where adding concurrent requests stops
adding throughput (the knee), for an autoscaler's per-replica concurrency target.

    .venv/bin/python benchmarks/knee.py [--concurrency 1,2,4,8,16,24,32,48,64]

Starts this service (bundled model, default settings), warms it at every concurrency, then
drives it with vLLM's own benchmark client as compare.py does. Writes
docs/benchmarks/knee.json. Loopback only; every run is bounded by its prompt count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import KEY, bench  # noqa: E402

from components.core.settings import EngineSettings  # noqa: E402
from components.vllm_adapter.bundled_model import ensure_converted  # noqa: E402
from harness.server import host_cpu, start_server  # noqa: E402

# The knee: the smallest concurrency that reaches this share of the best throughput seen.
KNEE_SHARE = 0.9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,2,4,8,16,24,32,48,64")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks/knee.json"))
    options = parser.parse_args()
    levels = [int(c) for c in options.concurrency.split(",")]
    model_dir = str(ensure_converted(EngineSettings().cache_dir))  # type: ignore[call-arg]
    logs = Path("/tmp/llm-bench-logs")  # noqa: S108 - logs of this local benchmark only
    logs.mkdir(exist_ok=True)
    env = {"API_KEYS": KEY, "DEFAULT_RATE_LIMIT": "1000000", "MAX_QUEUE_SIZE": "200", "QUEUE_TIMEOUT_SECONDS": "3600"}
    service = start_server(logs, env=env, name="knee")
    rows = []
    try:
        service.wait_ready()
        for c in levels:
            bench(service.url, model_dir, c, max(8, c), 128, 64)
        for c in levels:
            result = bench(service.url, model_dir, c, max(16, 2 * c), 128, 64)
            rows.append({"concurrency": c, "output_tok_s": round(result["output_throughput"], 1),
                         "ttft_p50_ms": round(result["median_ttft_ms"], 1),
                         "tpot_p50_ms": round(result["median_tpot_ms"], 2), "failed": result["failed"]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        service.stop()
    best = max(r["output_tok_s"] for r in rows)
    knee = min(r["concurrency"] for r in rows if r["output_tok_s"] >= KNEE_SHARE * best)
    cpu = host_cpu()
    machine = (f"{cpu['model']} ({', '.join(cpu['flags'])}), {cpu['cores']} cores, {platform.machine()}, no GPU, "
               f"python {platform.python_version()}")
    settings = EngineSettings()  # type: ignore[call-arg]
    out = {"machine": machine, "max_num_seqs": settings.max_num_seqs, "knee_share": KNEE_SHARE,
           "knee_concurrency": knee, "best_output_tok_s": best, "runs": rows}
    Path(options.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
