"""This service against vLLM's own OpenAI server, same model and engine arguments, one run.

    .venv/bin/python benchmarks/compare.py [--concurrency 1,16,64] [--rounds 2] [--trace-ratio 0.1]
        [--service-env ENGINE_QUEUE_DEPTH=32 ...]

Both servers are started (one after the other), then driven alternately A/B/A/B with vLLM's
own benchmark client (random dataset, local tokenizer, --ignore-eos) so that drift on a
noisy machine hits both. Writes docs/benchmarks/results.json, results.md and results.png
(with --trace-ratio, the service traces that share of requests to a loopback OTLP receiver,
raw vLLM none, and the files are named results-traced-<ratio>.*).
Loopback only; every run is bounded by its prompt count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.core.settings import EngineSettings  # noqa: E402
from components.vllm_adapter.bundled_model import SERVED_NAME, ensure_converted  # noqa: E402
from components.vllm_adapter.engine_spec import resolve_spec  # noqa: E402
from harness.otlp_receiver import OtlpReceiver  # noqa: E402
from harness.server import free_port, host_cpu, start_server  # noqa: E402

KEY = "sk-bench-not-secret"


def start_raw_vllm(args: list[str], engine_env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, **engine_env}  # the same engine environment the service exports
    command = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", *args, "--port", str(port),
               "--host", "127.0.0.1"]
    # Our own interpreter and fixed arguments.
    process = subprocess.Popen(  # noqa: S603
        command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("vLLM did not start")


def bench(url: str, tokenizer: str, concurrency: int, prompts: int, input_len: int, output_len: int,
          model: str = SERVED_NAME) -> dict[str, Any]:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(input_len), "--random-output-len", str(output_len), "--ignore-eos",
        "--num-prompts", str(prompts), "--max-concurrency", str(concurrency), "--request-rate", "inf",
        "--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,99", "--seed", "0", "--disable-tqdm",
    ])
    os.environ["OPENAI_API_KEY"] = KEY
    result = main(args)
    return {k: result.get(k) for k in (
        "completed", "failed", "request_throughput", "output_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
    )}


def overhead(urls: dict[str, str], rounds: int = 300) -> dict[str, Any]:
    """Per-request latency of /v1/models and of a 1-token completion, A/B interleaved."""
    headers = {"authorization": f"Bearer {KEY}"}
    out: dict[str, Any] = {}
    with httpx.Client(timeout=60, headers=headers) as client:
        for kind, call in (
            ("models", lambda u: client.get(f"{u}/v1/models")),
            ("completion_1_token", lambda u: client.post(
                f"{u}/v1/completions", json={"model": SERVED_NAME, "prompt": "Hi", "max_tokens": 1})),
        ):
            samples: dict[str, list[float]] = {name: [] for name in urls}
            n = rounds if kind == "models" else rounds // 3
            for _ in range(n):
                for name, url in urls.items():
                    started = time.perf_counter()
                    response = call(url)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
            out[kind] = {
                name: {"p50_ms": round(statistics.median(v), 3),
                       "p99_ms": round(statistics.quantiles(v, n=100)[98], 3)} for name, v in samples.items()
            }
            out[kind]["added_p50_ms"] = round(out[kind]["service"]["p50_ms"] - out[kind]["vllm"]["p50_ms"], 3)
            out[kind]["added_p99_ms"] = round(out[kind]["service"]["p99_ms"] - out[kind]["vllm"]["p99_ms"], 3)
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c in sorted({r["concurrency"] for r in runs}):
        row: dict[str, Any] = {"concurrency": c}
        for server in ("service", "vllm"):
            mine = [r for r in runs if r["concurrency"] == c and r["server"] == server]
            for key in ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms"):
                row[f"{server}_{key}"] = statistics.mean(r[key] for r in mine)
            row[f"{server}_failed"] = sum(r["failed"] for r in mine)
        row["throughput_ratio"] = row["service_output_throughput"] / row["vllm_output_throughput"]
        # Each round's own ratio (both servers measured back to back): the spread shows the noise.
        by_round = {(r["round"], r["server"]): r["output_throughput"] for r in runs if r["concurrency"] == c}
        row["round_ratios"] = [round(by_round[(n, "service")] / by_round[(n, "vllm")], 3)
                               for n in sorted({n for n, _ in by_round})]
        row["median_round_ratio"] = statistics.median(row["round_ratios"])
        row["ttft_p50_ratio"] = row["service_median_ttft_ms"] / row["vllm_median_ttft_ms"]
        rows.append(row)
    return rows


def write_markdown(rows: list[dict[str, Any]], over: dict[str, Any], machine: str, path: Path) -> None:
    lines = [
        f"Machine: {machine}. Same model and engine arguments; vLLM's benchmark client; A/B alternated.",
        "",
        "| concurrency | output tok/s (service) | ratio vs vLLM | median of round ratios | req/s | TTFT p50 ms "
        "| ratio | TTFT p99 ms | TPOT p50 ms | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['service_output_throughput']:.1f} | {r['throughput_ratio']:.3f} | "
            f"{r['median_round_ratio']:.3f} | "
            f"{r['service_request_throughput']:.2f} | {r['service_median_ttft_ms']:.1f} | {r['ttft_p50_ratio']:.3f} | "
            f"{r['service_p99_ttft_ms']:.1f} | {r['service_median_tpot_ms']:.1f} | {r['service_failed']} |"
        )
    lines += ["", "Front door overhead (service minus raw vLLM, same requests interleaved):", "",
              "| request | service p50 ms | vLLM p50 ms | added p50 ms | added p99 ms |", "|---|---|---|---|---|"]
    for kind, data in over.items():
        lines.append(f"| {kind} | {data['service']['p50_ms']} | {data['vllm']['p50_ms']} | "
                     f"{data['added_p50_ms']} | {data['added_p99_ms']} |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [r["concurrency"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for server, style in (("service", "o-"), ("vllm", "s--")):
        a.plot(cs, [r[f"{server}_output_throughput"] for r in rows], style, label=server)
        b.plot(cs, [r[f"{server}_median_ttft_ms"] for r in rows], style, label=server)
    a.set(xscale="log", xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    b.set(xscale="log", xlabel="concurrency", ylabel="TTFT p50 (ms)", title="Time to first token")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--prompts", type=int, default=64, help="per run (concurrency 1 uses a quarter)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks"))
    parser.add_argument("--trace-ratio", type=float, default=None, help="trace this share of the service's requests")
    parser.add_argument("--service-env", action="append", default=[], help="KEY=VALUE for the service only")
    options = parser.parse_args()
    name = "results" if options.trace_ratio is None else f"results-traced-{options.trace_ratio:g}"
    name += "".join(f"-{pair.lower().replace('=', '-')}" for pair in options.service_env)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path("/tmp/llm-bench-logs")  # noqa: S108 - logs of this local benchmark only
    logs.mkdir(exist_ok=True)

    model_dir = str(ensure_converted(EngineSettings().cache_dir))  # type: ignore[call-arg]
    spec = resolve_spec(EngineSettings(), gpu_count=0, drain_seconds=30)  # type: ignore[call-arg]
    # Raw vLLM gets the same engine arguments except our scheduler (components/vllm_adapter/engine_scheduler.py)
    # and its headroom: its own stock one, a batch of MAX_NUM_SEQS. (Without priority classes or
    # several keys ours schedules the same; this keeps "raw" raw.)
    raw_args = spec.stock_args
    raw, raw_url = start_raw_vllm(raw_args, spec.engine_env, logs / "vllm.log")
    # Queue like raw vLLM (which waits without bound): a slow host at concurrency 64 waits
    # longer than the default QUEUE_TIMEOUT_SECONDS, and refusals are not what this measures.
    env = {"API_KEYS": KEY, "DEFAULT_RATE_LIMIT": "1000000", "MAX_QUEUE_SIZE": "100", "QUEUE_TIMEOUT_SECONDS": "3600"}
    env |= dict(pair.split("=", 1) for pair in options.service_env)
    receiver = OtlpReceiver(keep=False).__enter__()
    if options.trace_ratio is not None:
        env |= {"OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "TRACES_SAMPLE_RATIO": str(options.trace_ratio)}
    service = start_server(logs, env=env, name="service")
    try:
        service.wait_ready()
        urls = {"service": service.url, "vllm": raw_url}
        # Warm both at every concurrency measured: the first batches of a new size cost each
        # engine one-off work (seen as a 3-4x TTFT at concurrency 16 in every first round).
        for url in urls.values():
            for c in sorted({4, *(int(x) for x in options.concurrency.split(","))}):
                bench(url, model_dir, c, max(8, c), options.input_len, options.output_len)
        runs = []
        for round_ in range(options.rounds):
            for c in (int(x) for x in options.concurrency.split(",")):
                prompts = max(8, options.prompts // 4) if c == 1 else max(options.prompts, c)
                order = ("service", "vllm") if round_ % 2 == 0 else ("vllm", "service")
                for server in order:
                    result = bench(urls[server], model_dir, c, prompts, options.input_len, options.output_len)
                    runs.append({"server": server, "concurrency": c, "round": round_, **result})
                    print(json.dumps(runs[-1]), flush=True)
        over = overhead(urls)
    finally:
        service.stop()
        raw.terminate()
        raw.wait(60)
        receiver.__exit__()
    rows = summarize(runs)
    cpu = host_cpu()
    machine = (f"{cpu['model']} ({', '.join(cpu['flags'])}), {cpu['cores']} cores, {platform.machine()}, no GPU, "
               f"python {platform.python_version()}")
    traced = {"trace_ratio": options.trace_ratio, "spans_received": receiver.received}
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "runs": runs, "summary": rows,
                                                  "front_door_overhead": over, "tracing": traced}, indent=2) + "\n")
    write_markdown(rows, over, machine, out / f"{name}.md")
    plot(rows, out / f"{name}.png")
    print((out / f"{name}.md").read_text(), traced)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
