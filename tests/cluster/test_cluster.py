"""The local cluster (deploy/cluster/cluster.sh: two replicas, Redis with a password, HAProxy
with TLS), tried as operators and tenants would. Run by `make test-cluster`, which brings the
cluster up first; the figures go to docs/benchmarks/cluster.json.

The scenarios run in file order and leave the cluster as they found it (both replicas up,
Redis up). Every wait is bounded; traffic goes only to loopback ports and the private
docker network.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import ssl
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness.server import host_cpu

STATE: dict[str, Any] = json.loads(Path(os.environ["CLUSTER_STATE"]).read_text())
KEYS: dict[str, str] = STATE["keys"]
LB: str = STATE["lb"]
CA: str = STATE["ca"]
MODEL = "gpt-4"  # an alias of the bundled model
RESULTS: dict[str, Any] = {}
OUT = Path(__file__).resolve().parents[2] / "docs/benchmarks/cluster.json"


@pytest.fixture(scope="module", autouse=True)
def record_figures():  # type: ignore[no-untyped-def]
    yield
    cpu = host_cpu()
    RESULTS["machine"] = (f"{cpu['model']} ({', '.join(cpu['flags'])}), {cpu['cores']} cores, "
                          f"{platform.machine()}, no GPU; two replicas of one core each")
    OUT.write_text(json.dumps(RESULTS, indent=2) + "\n")


def docker(*args: str) -> str:
    env = {**os.environ, "DOCKER_HOST": STATE["docker_host"], "PATH": "/usr/bin:" + os.environ["PATH"]}
    return subprocess.run(["docker", *args], env=env, check=True, capture_output=True, text=True, timeout=180).stdout


def lb_status() -> dict[str, str]:
    """Each replica's state as HAProxy sees it (UP, DOWN, ...), from its stats CSV."""
    rows = httpx.get(STATE["stats"], timeout=5).text.splitlines()
    header = rows[0].lstrip("# ").split(",")
    out = {}
    for row in rows[1:]:
        fields = dict(zip(header, row.split(","), strict=False))
        if fields.get("pxname") == "replicas" and fields.get("svname", "").startswith("llm-"):
            out[fields["svname"]] = fields["status"]
    return out


def wait_for(predicate, timeout: float, interval: float = 0.25) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `predicate()` held; fails the test past `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {predicate.__doc__ or predicate}")
        time.sleep(interval)
    return time.monotonic() - started


def client(key: str, base: str = LB) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300,
                         http_client=httpx.Client(verify=ssl.create_default_context(cafile=CA)))


def chat_body(max_tokens: int, text: str = "Count from one to ten.") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}


def sdk_args(max_tokens: int) -> dict[str, Any]:
    """chat_body for the openai client (vLLM's own fields go in extra_body)."""
    body = chat_body(max_tokens)
    body["extra_body"] = {"ignore_eos": body.pop("ignore_eos")}
    return body


async def burst(key: str, count: int, max_tokens: int = 1) -> list[httpx.Response]:
    """`count` chat requests at once through the load balancer, each on its own connection."""
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=CA), timeout=300) as http:
            return await http.post(f"{LB}/v1/chat/completions", json=chat_body(max_tokens),
                                   headers={"authorization": f"Bearer {key}"})
    return list(await asyncio.gather(*(one() for _ in range(count))))


class Streams:
    """`count` streams through the load balancer in threads, each to `max_tokens` tokens.
    `started` is set once every stream has its first chunk."""

    def __init__(self, key: str, count: int, max_tokens: int) -> None:
        self.count, self.max_tokens = count, max_tokens
        self.http = httpx.Client(verify=ssl.create_default_context(cafile=CA), timeout=300)
        self.served_by: list[str] = []
        self.finished: list[str | None] = []
        self.errors: list[str] = []
        self._first = threading.Barrier(count + 1, timeout=240)
        self._threads = [threading.Thread(target=self._one, args=(key,)) for _ in range(count)]

    def _one(self, key: str) -> None:
        body = {**chat_body(self.max_tokens, "Tell me a long story."), "stream": True}
        reason, first = None, True
        try:
            with self.http.stream("POST", f"{LB}/v1/chat/completions", json=body,
                                  headers={"authorization": f"Bearer {key}"}) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code} {response.read()[:200]!r}")
                self.served_by.append(response.headers.get("x-served-by", "?"))
                for line in response.iter_lines():
                    if first and line.startswith("data: {"):
                        first = False
                        self._first.wait()
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices", []):
                            reason = choice.get("finish_reason") or reason
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the test
            self.errors.append(repr(exc))
            if first:
                self._first.abort()
        self.finished.append(reason)

    def __enter__(self) -> Streams:
        for t in self._threads:
            t.start()
        self._first.wait()
        return self

    def join(self) -> None:
        for t in self._threads:
            t.join(300)

    def __exit__(self, *exc: object) -> None:
        self.join()
        self.http.close()


class Traffic:
    """Short requests through the load balancer, one after another, until stopped: what a
    client sees while an operator or a fault acts on the cluster."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.results: list[tuple[float, int, str]] = []  # (time, status or 0, served by or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(verify=ssl.create_default_context(cafile=CA), timeout=120) as http:
            while not self._stop.is_set() and len(self.results) < 5000:
                try:
                    r = http.post(f"{LB}/v1/chat/completions", json=chat_body(4),
                                  headers={"authorization": f"Bearer {self.key}"})
                    self.results.append((time.monotonic(), r.status_code, r.headers.get("x-served-by", "?")))
                except httpx.HTTPError as exc:
                    self.results.append((time.monotonic(), 0, repr(exc)))
                time.sleep(0.1)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(150)

    def failed(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[0] >= since and r[1] != 200]


def both_up() -> bool:
    """both replicas UP behind the load balancer"""
    return lb_status() == {"llm-a": "UP", "llm-b": "UP"}


def test_tls_at_the_load_balancer_and_at_a_replica() -> None:
    """The load balancer terminates TLS; each replica serves TLS itself (BentoML's ssl
    settings); a client that does not trust the cluster's CA is refused the handshake."""
    for base in (LB, STATE["replicas"]["llm-a"]):
        reply = client(KEYS["traffic"], base).chat.completions.create(**sdk_args(4))
        assert reply.choices[0].finish_reason == "length"
    untrusting = openai.OpenAI(base_url=f"{LB}/v1", api_key=KEYS["traffic"], max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        untrusting.models.list()
    RESULTS["tls"] = {"load_balancer": "handshake ok, CA verified", "replica": "handshake ok (BentoML ssl)",
                      "untrusted_client": "refused"}


def test_request_and_token_limits_are_exact_across_replicas_while_both_generate() -> None:
    assert both_up()
    with Streams(KEYS["background"], 8, 256) as streams:
        # Requests: a limit of 10, 30 at once, spread over both replicas by the balancer.
        replies = asyncio.run(burst(KEYS["requests"], 30))
        requests = Counter(r.status_code for r in replies)
        by_replica = Counter(r.headers.get("x-served-by") for r in replies)
        # Tokens: 1000 per minute; each request reserves its prompt + max_tokens.
        probe = client(KEYS["traffic"]).chat.completions.create(**sdk_args(100))
        assert probe.usage is not None
        per_request = probe.usage.prompt_tokens + 100
        tokens = Counter(r.status_code for r in asyncio.run(burst(KEYS["tokens"], 3 * (1000 // per_request), 100)))
    assert streams.errors == [] and streams.finished == ["length"] * 8
    assert set(by_replica) == {"llm-a", "llm-b"}, by_replica
    assert requests == {200: 10, 429: 20}, requests
    assert tokens[200] == 1000 // per_request and tokens[429] == 2 * (1000 // per_request), tokens
    RESULTS["limits"] = {
        "requests": {"limit_per_minute": 10, "sent_at_once": 30, "admitted": requests[200],
                     "refused_429": requests[429], "answered_by": dict(by_replica)},
        "tokens": {"limit_per_minute": 1000, "reserved_per_request": per_request,
                   "sent_at_once": sum(tokens.values()), "admitted": tokens[200], "refused_429": tokens[429]},
        "while": "8 streams of 256 tokens were generating on the two replicas",
    }


def test_a_rolling_restart_fails_no_request() -> None:
    assert both_up()
    with Streams(KEYS["background"], 16, 128) as streams, Traffic(KEYS["traffic"]) as traffic:
        stopping = Counter(streams.served_by)["llm-a"]
        assert stopping > 0, streams.served_by
        started = time.monotonic()
        docker("stop", "--time", "90", "llm-a")
        stop_s = time.monotonic() - started
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", "llm-a").strip()
        streams.join()
        after_stop = [r for r in traffic.results if r[0] >= started]
    assert exit_code == "0"
    assert streams.errors == [] and streams.finished == ["length"] * 16, (streams.errors, streams.finished)
    assert traffic.failed() == [], traffic.failed()
    assert after_stop and {r[2] for r in after_stop[-5:]} == {"llm-b"}
    docker("start", "llm-a")
    with Traffic(KEYS["traffic"]) as rejoin:
        rejoin_s = wait_for(both_up, 600, 1)
        wait_for(lambda: any(r[2] == "llm-a" for r in rejoin.results[-10:]), 30)
    assert rejoin.failed() == [], rejoin.failed()
    RESULTS["rolling_restart"] = {
        "streams": 16, "streams_on_stopped_replica": stopping, "streams_completed": streams.finished.count("length"),
        "requests_during_stop": len(traffic.results), "requests_while_rejoining": len(rejoin.results),
        "failed_requests": 0,
        "docker_stop_s": round(stop_s, 1), "exit_code": 0, "rejoined_after_start_s": round(rejoin_s, 1),
    }


KILL_ENGINE = ("import os, signal\n"
               "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
               "    try:\n"
               "        if open(f'/proc/{pid}/cmdline', 'rb').read().startswith(b'VLLM::EngineCore'):\n"
               "            os.kill(int(pid), signal.SIGKILL); print(pid)\n"
               "    except OSError:\n"
               "        pass\n")


def test_an_engine_killed_in_one_replica_is_routed_around_and_restarted() -> None:
    assert both_up()
    restarts = int(docker("inspect", "-f", "{{.RestartCount}}", "llm-b"))
    with Traffic(KEYS["traffic"]) as traffic:
        wait_for(lambda: len(traffic.results) >= 5, 60)
        killed_at = time.monotonic()
        assert docker("exec", "llm-b", "python3", "-c", KILL_ENGINE).split(), "no engine process found"
        route_around_s = wait_for(lambda: lb_status().get("llm-b", "").startswith("DOWN"), 30, 0.1)
        switched = time.monotonic()
        wait_for(lambda: int(docker("inspect", "-f", "{{.RestartCount}}", "llm-b")) > restarts, 120, 1)
        wait_for(both_up, 600, 1)
        rejoin_s = time.monotonic() - killed_at
        wait_for(lambda: any(r[2] == "llm-b" for r in traffic.results[-10:]), 30)
    failed_before = [r for r in traffic.failed() if killed_at <= r[0] < switched]
    assert traffic.failed(since=switched) == [], traffic.failed(since=switched)
    assert route_around_s <= 5, route_around_s
    RESULTS["engine_killed"] = {
        "route_around_s": round(route_around_s, 2), "failed_before_switch": len(failed_before),
        "failed_after_switch": 0, "container_restarted": True, "rejoined_after_kill_s": round(rejoin_s, 1),
        "requests_meanwhile": len(traffic.results),
    }


def full_limit_answers() -> bool:
    """both replicas answer with the full shared limit (Redis in use again)"""
    seen = {}
    with httpx.Client(verify=ssl.create_default_context(cafile=CA), timeout=60) as http:
        for _ in range(4):
            r = http.post(f"{LB}/v1/chat/completions", json=chat_body(1),
                          headers={"authorization": f"Bearer {KEYS['traffic']}"})
            seen[r.headers.get("x-served-by")] = r.headers.get("x-ratelimit-limit-requests")
    return len(seen) == 2 and len(set(seen.values())) == 1 and None not in seen.values()


def storage_errors() -> float:
    total = 0.0
    for base in STATE["replicas"].values():
        text = httpx.get(f"{base}/metrics", verify=ssl.create_default_context(cafile=CA), timeout=10,
                         headers={"authorization": f"Bearer {KEYS['ops']}"}).text
        total += sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("vllm_storage_errors_total"))
    return total


def test_a_redis_outage_keeps_serving_with_each_replica_holding_its_share() -> None:
    assert both_up() and full_limit_answers()
    errors_before = storage_errors()
    docker("stop", "llm-redis")
    try:
        outage = Counter(r.status_code for r in asyncio.run(burst(KEYS["outage"], 30)))
        with Traffic(KEYS["traffic"]) as traffic:
            wait_for(lambda: len(traffic.results) >= 20, 120)
        errors_during = storage_errors()
    finally:
        docker("start", "llm-redis")
    assert traffic.failed() == [], traffic.failed()
    assert errors_during > errors_before
    # Each replica held half of the limit of 10: 5 + 5 (round robin splits the burst evenly).
    assert outage == {200: 10, 429: 20}, outage
    back_s = wait_for(full_limit_answers, 60, 0.5)
    restored = Counter(r.status_code for r in asyncio.run(burst(KEYS["restored"], 30)))
    assert restored == {200: 10, 429: 20}, restored
    # Paused (SIGSTOP-like, the cgroup freezer): each call times out, nothing hangs.
    docker("pause", "llm-redis")
    try:
        with Traffic(KEYS["traffic"]) as paused:
            wait_for(lambda: len(paused.results) >= 10, 120)
    finally:
        docker("unpause", "llm-redis")
    assert paused.failed() == [], paused.failed()
    wait_for(full_limit_answers, 60, 0.5)
    RESULTS["redis_outage"] = {
        "stopped": {"limit_per_minute": 10, "sent_at_once": 30, "admitted": outage[200], "refused_429": outage[429],
                    "ordinary_requests_served": len(traffic.results), "failed": 0,
                    "storage_errors_counted": errors_during - errors_before},
        "restarted": {"shared_limit_back_after_s": round(back_s, 1), "admitted": restored[200],
                      "refused_429": restored[429]},
        "paused": {"requests_served": len(paused.results), "failed": 0},
    }
