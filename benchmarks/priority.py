"""Priority classes under overload, one run on this machine.

    .venv/bin/python benchmarks/priority.py [--seconds 90] [--overload 2.0] [--set NAME=VALUE] [--out priority]

One real `bentoml serve` with a keys file of two keys: `interactive` and `batch`. Phases:

1. unloaded: the interactive key alone, one streaming request at a time: its TTFT p95;
2. capacity: the batch key with MAX_NUM_SEQS closed-loop clients: completions per second;
3. with classes (interactive / batch): open-loop arrivals at `overload` x capacity for
   `seconds`, 80 % from the batch key, 20 % from the interactive key;
4. plain FIFO: the keys file is swapped (hot reload) to give both keys the same class, and
   phase 3 is repeated with the same arrival schedule.

Passes (exit 0) when, with classes, the interactive key's TTFT p95 is at most 1.5x its
unloaded value and the batch key completes at least 70 % of what it completes under FIFO.
Writes docs/benchmarks/priority.json and priority.png with the host's CPU model and flags.
Loopback only; every phase is bounded by its duration.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.server import host_cpu, start_server  # noqa: E402

INTERACTIVE, BATCH = "sk-bench-interactive-7c1d", "sk-bench-batch-2e9f"
MAX_NUM_SEQS = 8
SETTINGS = {"MAX_NUM_SEQS": str(MAX_NUM_SEQS), "MAX_QUEUE_SIZE": "64", "MAX_QUEUED_PER_KEY": "64",
            "QUEUE_TIMEOUT_SECONDS": "30", "REQUEST_TIMEOUT_SECONDS": "0", "DEFAULT_RATE_LIMIT": "1000000",
            "KEYS_RELOAD_SECONDS": "0.5"}
OUT = ROOT / "docs" / "benchmarks"
BATCH_BODY = {"model": "gpt-4", "prompt": "Write a long story about a lighthouse keeper.", "max_tokens": 64,
              "ignore_eos": True, "stream": True}
CHAT_BODY = {"model": "gpt-4", "max_tokens": 16, "stream": True, "temperature": 0,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def keys_yaml(batch_class: str) -> str:
    def entry(kid: str, key: str, klass: str) -> str:
        return f"  - id: {kid}\n    sha256: '{hashlib.sha256(key.encode()).hexdigest()}'\n    priority: {klass}\n"
    return "keys:\n" + entry("interactive", INTERACTIVE, "interactive") + entry("batch", BATCH, batch_class)


async def one(client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]) -> tuple[int, float | None]:
    """(status, time to first content event) of one streaming request."""
    started = time.monotonic()
    ttft = None
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                ttft = time.monotonic() - started
        return 200, ttft


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


async def unloaded(base: str, seconds: float) -> list[float]:
    async with httpx.AsyncClient(timeout=120) as client:
        until, ttfts = time.monotonic() + seconds, []
        while time.monotonic() < until:
            status, ttft = await one(client, f"{base}/v1/chat/completions", INTERACTIVE, CHAT_BODY)
            if status == 200 and ttft is not None:
                ttfts.append(ttft)
        return ttfts


async def capacity(base: str, seconds: float) -> float:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        until, done = time.monotonic() + seconds, 0

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < until:
                if (await one(client, f"{base}/v1/completions", BATCH, BATCH_BODY))[0] == 200:
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*[worker() for _ in range(MAX_NUM_SEQS)])
        return done / (time.monotonic() - started)


async def overload(base: str, schedule: list[tuple[float, str]]) -> dict[str, Any]:
    """Open-loop arrivals at the schedule's offsets; every request bounded by the client timeout."""
    results: dict[str, list[tuple[int, float | None]]] = {"interactive": [], "batch": []}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=512)) as client:
        started = time.monotonic()

        async def arrive(offset: float, who: str) -> None:
            await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
            if who == "batch":
                outcome = await one(client, f"{base}/v1/completions", BATCH, BATCH_BODY)
            else:
                outcome = await one(client, f"{base}/v1/chat/completions", INTERACTIVE, CHAT_BODY)
            results[who].append(outcome)

        await asyncio.gather(*[arrive(offset, who) for offset, who in schedule])
    ttfts = [t for s, t in results["interactive"] if s == 200 and t is not None]
    return {
        "interactive": {"sent": len(results["interactive"]), "ok": len(ttfts),
                        "ttft_p95_s": round(p95(ttfts), 4) if ttfts else None,
                        "ttft_median_s": round(statistics.median(ttfts), 4) if ttfts else None},
        "batch": {"sent": len(results["batch"]), "completed": sum(1 for s, _ in results["batch"] if s == 200),
                  "refused": sum(1 for s, _ in results["batch"] if s != 200)},
    }


def arrivals(rate: float, seconds: float, seed: int = 11) -> list[tuple[float, str]]:
    """Poisson arrivals at `rate` per second, 80 % batch."""
    rng, at, out = random.Random(seed), 0.0, []  # noqa: S311 - a reproducible schedule, not a secret
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            return out
        out.append((at, "batch" if rng.random() < 0.8 else "interactive"))


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["unloaded", "classes", "FIFO"]
    ttft = [figures["unloaded_ttft_p95_s"], figures["with_classes"]["interactive"]["ttft_p95_s"] or 0,
            figures["fifo"]["interactive"]["ttft_p95_s"] or 0]
    left.bar(labels, ttft, color=["grey", "tab:green", "tab:red"])
    left.axhline(1.5 * figures["unloaded_ttft_p95_s"], ls="--", color="black", label="1.5x unloaded")
    left.set_title("interactive key: TTFT p95 (s)")
    left.legend()
    completed = [figures["with_classes"]["batch"]["completed"], figures["fifo"]["batch"]["completed"]]
    right.bar(["classes", "FIFO"], completed, color=["tab:green", "tab:red"])
    right.set_title("batch key: requests completed")
    host = figures["host"]
    fig.suptitle(f"{figures['overload']}x overload, 80 % batch; {host['model']} ({', '.join(host['flags'])}), "
                 f"{host['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for this run, e.g. PRIORITY_BATCH_SHARE=0.5 (repeatable)")
    parser.add_argument("--out", default="priority", help="file name stem under docs/benchmarks")
    args = parser.parse_args()
    settings = {**SETTINGS, **dict(item.split("=", 1) for item in args.set)}
    work = Path(tempfile.mkdtemp(prefix="priority-"))
    keys = work / "keys.yaml"
    keys.write_text(keys_yaml("batch"))
    server = start_server(work, env={**settings, "KEYS_FILE": str(keys)}, name="priority")
    try:
        server.wait_ready(timeout=900)
        base = server.url
        quiet = asyncio.run(unloaded(base, 30))
        rate = asyncio.run(capacity(base, 40))
        schedule = arrivals(rate * args.overload, args.seconds)
        with_classes = asyncio.run(overload(base, schedule))
        keys.write_text(keys_yaml("interactive"))  # both keys one class: plain FIFO between them
        time.sleep(2)  # the reload interval is 0.5 s
        fifo = asyncio.run(overload(base, schedule))
    finally:
        server.stop()
    figures = {
        "host": {**host_cpu(), "machine": platform.machine()},
        "settings": settings, "seconds": args.seconds, "overload": args.overload,
        "capacity_rps": round(rate, 3), "arrival_rps": round(rate * args.overload, 3),
        "unloaded_ttft_p95_s": round(p95(quiet), 4), "unloaded_samples": len(quiet),
        "with_classes": with_classes, "fifo": fifo,
    }
    ratio = (with_classes["interactive"]["ttft_p95_s"] or float("inf")) / figures["unloaded_ttft_p95_s"]
    share = with_classes["batch"]["completed"] / max(1, fifo["batch"]["completed"])
    figures["interactive_ttft_p95_ratio"] = round(ratio, 3)
    figures["batch_completed_vs_fifo"] = round(share, 3)
    figures["passed"] = ratio <= 1.5 and share >= 0.7
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(figures, indent=2) + "\n")
    plot(figures, OUT / f"{args.out}.png")
    print(json.dumps(figures, indent=2))
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
