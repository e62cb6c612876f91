"""Hostile-tenant soak: one key attacks while another works, against the real service.

The hostile key, all at once and for SOAK_SECONDS: silent readers (sockets that read
nothing and close after 10 s), long generations, disconnect storms, prompt-list fan-out,
bodies that echo an engine fault's words into vLLM's errors (to open the breaker), streams
of n choices dropped before their usage chunk, and a flood of stored Responses with the
largest metadata allowed (to evict the other key's); and keyless clients abort uploads
mid-body. Meanwhile the polite key, from a process of its own, sends ordinary chat requests
one after another. Loopback only; every loop stops by itself.

Passes when every polite request succeeds, its TTFT p95 is <= 2x its unloaded p95, the
response it stored before the attack is still there after it, the breaker never opens,
nothing answers 5xx except intended 503s with retry-after, and afterwards nothing is
running, queued, unfinished in the engine or in progress in BentoML.
Figures go to docs/benchmarks/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.server import Server, host_cpu, running_server

HOSTILE, POLITE = "sk-soak-hostile-5a1e", "sk-soak-polite-c07b"
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
# The settings this soak recommends (docs/operations.md, "Hostile-tenant soak"): one key may
# hold a quarter of the engine's sequences, so a hostile key slows the others by a bounded
# amount; and on a CPU host one core stays off the engine's compute threads, so the HTTP side
# (the other key's request, the attacker's traffic) never preempts the engine mid-step.
SETTINGS = {
    "MAX_NUM_SEQS": "8",
    "MAX_QUEUE_SIZE": "16",
    "MAX_INFLIGHT_PER_KEY": "2",
    "REQUEST_TIMEOUT_SECONDS": "120",
    "STREAM_STALL_TIMEOUT_SECONDS": "5",
    "QUEUE_TIMEOUT_SECONDS": "10",
    "BREAKER_MIN_CALLS": "4",
    "CPU_RESERVED_CORES": "1",
}
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "soak.json"
CHAT = {"model": "gpt-4", "max_tokens": 16, "stream": True, "temperature": 0,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is the capital of France?"}]}
LONG = {"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"API_KEYS": f"{HOSTILE},{POLITE}", "DEFAULT_RATE_LIMIT": "100000", **SETTINGS}
    with running_server(tmp_path_factory.mktemp("soak"), env, name="soak") as srv:
        yield srv


@pytest.fixture
def polite_client() -> Iterator[ProcessPoolExecutor]:
    """The polite key's own process: its clock is not held up by the attack's client loops,
    which on one host would share its event loop otherwise."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def polite_request(client: httpx.AsyncClient, url: str) -> tuple[int, float | None, str]:
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=CHAT, headers=auth(POLITE)) as response:
        if response.status_code != 200:
            return response.status_code, None, (await response.aread()).decode()[:200]
        last = ""
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                if ttft is None:
                    ttft = time.perf_counter() - started
                last = line
        return 200, ttft, last


async def polite_loop(url: str, until: float, results: list[tuple[int, float | None, str]]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < until:
            results.append(await polite_request(client, url))


def polite_run(url: str, seconds: float) -> list[tuple[int, float | None, str]]:
    results: list[tuple[int, float | None, str]] = []
    asyncio.run(polite_loop(url, time.monotonic() + seconds, results))
    return results


def record(statuses: Counter[int], response: httpx.Response) -> None:
    # A 503 without retry-after is not an intended refusal: counted as a 500.
    intended = response.status_code != 503 or "retry-after" in response.headers
    statuses[response.status_code if intended else 500] += 1


async def long_generations(url: str, until: float, statuses: Counter[int]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < until:
            response = await client.post(f"{url}/v1/completions", json=LONG, headers=auth(HOSTILE))
            record(statuses, response)
            if response.status_code in (429, 503):
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))


async def disconnect_storm(url: str, until: float, statuses: Counter[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            async with client.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True},
                                     headers=auth(HOSTILE)) as response:
                record(statuses, response)
                if response.status_code == 200:
                    async for _ in response.aiter_lines():
                        break  # gone after the first line
                else:
                    await asyncio.sleep(0.2)


async def fan_out(url: str, until: float, statuses: Counter[int]) -> None:
    body = {"prompt": ["a", "b"], "max_tokens": 64, "ignore_eos": True}  # 2 sequences: the whole share
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            response = await client.post(f"{url}/v1/completions", json=body, headers=auth(HOSTILE))
            record(statuses, response)
            await asyncio.sleep(0.2)


async def breaker_words(url: str, until: float, statuses: Counter[int]) -> None:
    """vLLM's validation errors echo client input: words of an engine fault must not count as one."""
    words = ["out of memory", "CUDA error: out of memory", "EngineDeadError", "EngineCore encountered an issue"]
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            for word in words:
                response = await client.post(f"{url}/v1/chat/completions", headers=auth(HOSTILE), json={
                    **CHAT, "stream": False, "logit_bias": {word: 1}})
                record(statuses, response)
            # Ten times the breaker's minimum calls per window: enough to open it if it counted.
            await asyncio.sleep(1)


async def dropped_choices(url: str, until: float, statuses: Counter[int]) -> None:
    """n choices, ignore_eos, the stream closed before the usage chunk: every choice is charged."""
    body = {**CHAT, "n": 2, "max_tokens": 40, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                     headers=auth(HOSTILE)) as response:
                record(statuses, response)
                if response.status_code == 200:
                    lines = 0
                    async for _ in response.aiter_lines():
                        lines += 1
                        if lines == 20:
                            break
            await asyncio.sleep(0.2)


# OpenAI's bounds on metadata: 16 pairs, keys up to 64 characters, values up to 512.
BIG_METADATA = {f"k{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}


async def store_flood(url: str, until: float, statuses: Counter[int]) -> None:
    """Stored Responses of a few tokens and the largest metadata allowed, as fast as allowed."""
    body = {"model": "gpt-4", "input": "Hi", "max_output_tokens": 1, "store": True, "metadata": BIG_METADATA}
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            response = await client.post(f"{url}/v1/responses", json=body, headers=auth(HOSTILE))
            record(statuses, response)
            await asyncio.sleep(0.5)


def store_one(url: str) -> str:
    """The polite key's stored response, made before the attack."""
    response = httpx.post(f"{url}/v1/responses", headers=auth(POLITE), timeout=60, json={
        "model": "gpt-4", "input": "What is the capital of France?", "max_output_tokens": 4, "store": True})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def stalled_reader(port: int) -> socket.socket:
    # Big events (2 sequences, top-20 logprobs for every token) fill the socket quickly.
    body = json.dumps({**LONG, "max_tokens": 3000, "n": 2, "logprobs": 20, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {HOSTILE}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )
    return sock


async def stalled_readers(port: int, until: float) -> int:
    opened = 0
    while time.monotonic() < until:
        sock = await asyncio.to_thread(stalled_reader, port)
        opened += 1
        await asyncio.sleep(10)  # never read; the server closes it
        sock.close()
    return opened


def aborted_upload(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 100000\r\n\r\n{\"messages\": [")


async def aborted_uploads(port: int, until: float) -> int:
    count = 0
    while time.monotonic() < until:
        await asyncio.to_thread(aborted_upload, port)
        count += 1
        await asyncio.sleep(0.1)
    return count


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def snapshot(server: Server) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=10).json()


def in_progress(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("bentoml_service_request_in_progress{"))


def test_first_logprobs_request_does_not_stall_the_engine(server: Server) -> None:
    """vLLM compiles its logprobs ranking on first use, and every tenant's generation
    stops meanwhile (about 4 s on this machine kind, against 0.25 s for the request); the
    engine warm-up does it before the service is ready. Runs first on this module's fresh
    server and compares, side by side, the first logprobs request with the next one."""
    plain = {"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0}
    httpx.post(f"{server.url}/v1/completions", json=plain, headers=auth(POLITE), timeout=60).raise_for_status()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        response = httpx.post(f"{server.url}/v1/completions", json={**plain, "logprobs": 5}, headers=auth(POLITE),
                              timeout=60)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["logprobs"]["top_logprobs"], response.text
    assert seconds[0] < 3 * seconds[1], seconds


def test_hostile_tenant_soak(server: Server, polite_client: ProcessPoolExecutor) -> None:
    url = server.url
    # Not measured: the client process's own first requests, and the service's first
    # seconds after ready (slower than its steady state, so they would flatter the ratio).
    polite_client.submit(polite_run, url, 10).result()
    # 40 s: about 60 requests, so that the p95 is not just the second-worst of a few.
    baseline = polite_client.submit(polite_run, url, 40).result()
    unloaded = [t for s, t, _ in baseline if s == 200 and t is not None]
    assert len(unloaded) >= 5, baseline

    stored = store_one(url)
    polite: list[tuple[int, float | None, str]] = []
    hostile: Counter[int] = Counter()
    breaker_states: set[str] = set()

    async def attack() -> tuple[int, int]:
        until = time.monotonic() + SOAK_SECONDS

        async def watch_breaker() -> None:
            while time.monotonic() < until:
                breaker_states.add((await asyncio.to_thread(snapshot, server))["circuit_breaker_state"])
                await asyncio.sleep(1)

        async def polite_loop_elsewhere() -> None:
            polite.extend(await asyncio.wrap_future(polite_client.submit(polite_run, url, until - time.monotonic())))

        counted = asyncio.gather(stalled_readers(server.port, until), aborted_uploads(server.port, until))
        await asyncio.gather(
            polite_loop_elsewhere(),
            long_generations(url, until, hostile),
            long_generations(url, until, hostile),
            disconnect_storm(url, until, hostile),
            fan_out(url, until, hostile),
            breaker_words(url, until, hostile),
            dropped_choices(url, until, hostile),
            store_flood(url, until, hostile),
            counted,
            watch_breaker(),
        )
        silent, aborted = counted.result()
        return silent, aborted

    stalled, uploads = asyncio.run(attack())

    ok = [t for s, t, last in polite if s == 200 and t is not None and last == "data: [DONE]"]
    success = len(ok) / len(polite)
    ratio = p95(ok) / p95(unloaded)
    polite_errors = Counter(s for s, _, _ in polite if s != 200)
    server_errors = {s: n for s, n in hostile.items() if s >= 500 and s != 503}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = snapshot(server)
        if (after["active_requests"], after["queued_requests"], after["engine_unfinished_requests"]) == (0, 0, 0) \
                and in_progress(server) == 0:
            break
        time.sleep(1)
    bento_in_progress = in_progress(server)
    kept = httpx.get(f"{url}/v1/responses/{stored}", headers=auth(POLITE), timeout=10).status_code
    figures = {
        "soak_seconds": SOAK_SECONDS,
        "settings": SETTINGS,
        "host": {**host_cpu(), "machine": platform.machine()},
        "polite": {"requests": len(polite), "success_rate": round(success, 4), "errors": dict(polite_errors),
                   "ttft_p95_unloaded_s": round(p95(unloaded), 4), "ttft_p95_loaded_s": round(p95(ok), 4),
                   "ttft_p95_ratio": round(ratio, 3)},
        "hostile": {"statuses": {str(k): v for k, v in sorted(hostile.items())}, "stalled_readers": stalled,
                    "keyless_aborted_uploads": uploads},
        "breaker_states_seen": sorted(breaker_states),
        "polite_stored_response_after": kept,
        "after": {**{k: after[k] for k in ("active_requests", "queued_requests", "engine_unfinished_requests")},
                  "bentoml_request_in_progress": bento_in_progress},
    }
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nsoak:", json.dumps(figures))
    assert success == 1.0, figures
    assert kept == 200, figures
    assert ratio <= 2.0, figures
    assert breaker_states == {"closed"}, figures
    assert not server_errors, figures
    left = (after["active_requests"], after["queued_requests"], after["engine_unfinished_requests"])
    assert left == (0, 0, 0), figures
    assert bento_in_progress == 0, figures
