"""Deadline-aware admission (time-to-first-token objectives) against the real engine: one
server, one sequence in the engine at a time (MAX_NUM_SEQS 1, ENGINE_QUEUE_DEPTH 0) so that
whatever else arrives waits in the fair queue, where deadlines act.

Each test holds the engine with one long stream that it closes itself: nothing here races
the host's speed; the only waits are deadlines that pass while a request is held back."""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.held_stream import PROMPT, HeldStream
from harness.server import Server, running_server, wait_until

KEY_BLOCK = "sk-deadline-block-3e91a0"  # no objective: holds the engine
KEY_SLO = "sk-deadline-slo-7c20d4"  # ttft_slo_ms SLO_MS
KEY_EDF = "sk-deadline-edf-51b8f6"  # no objective of its own: its requests set one by header
KEY_ADMIN = "sk-deadline-admin-0a6c3e"
SLO_MS = 1500


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_yaml() -> str:
    entries = [
        ("block", KEY_BLOCK, "name: block"),
        ("slo", KEY_SLO, f"ttft_slo_ms: {SLO_MS}"),
        ("edf", KEY_EDF, "name: edf"),
        ("ops", KEY_ADMIN, "admin: true"),
    ]
    return "keys:\n" + "".join(f"  - id: {kid}\n    sha256: '{sha(key)}'\n    {extra}\n" for kid, key, extra in entries)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("deadlines")
    (home / "keys.yaml").write_text(keys_yaml())
    env = {
        "KEYS_FILE": str(home / "keys.yaml"), "REQUIRE_API_KEYS": "true", "DEFAULT_RATE_LIMIT": "100000",
        "MAX_NUM_SEQS": "1", "ENGINE_QUEUE_DEPTH": "0", "MAX_QUEUE_SIZE": "8", "MAX_QUEUED_PER_KEY": "8",
        "REQUEST_TIMEOUT_SECONDS": "0",  # nothing here may end by the host's speed
        "QUEUE_TIMEOUT_SECONDS": "600",  # only deadlines end a wait
    }
    with running_server(home, env, name="deadlines") as srv:
        yield srv


def headers(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=10).json()


def idle(server: Server) -> bool:
    h = health(server)
    return h["active_requests"] == 0 and h["queued_requests"] == 0 and h["engine_unfinished_requests"] == 0


def metric_total(server: Server, name: str, **labels: str) -> float:
    total = 0.0
    text = httpx.get(f"{server.url}/metrics", headers=headers(KEY_ADMIN), timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def Stream(server: Server, key: str, max_tokens: int = 3000, **extra: str) -> HeldStream:  # noqa: N802
    return HeldStream(server.url, headers(key, **extra), max_tokens)


def hold_engine(server: Server,
                pool: concurrent.futures.ThreadPoolExecutor) -> tuple[HeldStream, concurrent.futures.Future[int]]:
    """A long stream in the engine's only place, streaming already."""
    assert wait_until(lambda: idle(server), 120)
    blocker = Stream(server, KEY_BLOCK)
    future = pool.submit(blocker.run)
    assert blocker.first.wait(180), "the blocker never started"
    return blocker, future


def short(server: Server, key: str, **extra: str) -> httpx.Response:
    body = {"prompt": PROMPT, "max_tokens": 2}
    return httpx.post(f"{server.url}/v1/completions", json=body, headers=headers(key, **extra), timeout=300)


def refused_while_queued(server: Server, key: str, **extra: str) -> None:
    """With the engine held, `key`'s request is dropped at its deadline: 503 with retry-after,
    counted as a queued deadline refusal, and vLLM never saw its prompt."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        blocker, held = hold_engine(server, pool)
        try:
            queued_before = metric_total(server, "vllm_deadline_refusals_total", when="queued")
            arrival_before = metric_total(server, "vllm_deadline_refusals_total", when="arrival")
            prompts_before = metric_total(server, "vllm:prompt_tokens_total")
            requests_before = metric_total(server, "vllm:request_success_total")
            response = short(server, key, **extra)  # returns once its deadline passed
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["message"]
            assert metric_total(server, "vllm_deadline_refusals_total", when="queued") == queued_before + 1
            assert metric_total(server, "vllm_deadline_refusals_total", when="arrival") == arrival_before
            # The engine still holds only the blocker: the dropped request never reached it.
            assert health(server)["engine_unfinished_requests"] == 1
            assert metric_total(server, "vllm:prompt_tokens_total") == prompts_before
            assert metric_total(server, "vllm:request_success_total") == requests_before
        finally:
            blocker.close.set()
        assert held.result(60) == 200
    assert wait_until(lambda: idle(server), 60)


def test_a_queued_request_is_dropped_at_its_deadline_before_the_engine(server: Server) -> None:
    refused_while_queued(server, KEY_SLO)


def test_a_looser_header_is_bounded_by_the_keys_objective(server: Server) -> None:
    # Ten minutes asked, SLO_MS allowed: the key's objective still drops it.
    refused_while_queued(server, KEY_SLO, **{"x-slo-ttft-ms": "600000"})


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5", "99999999"])
def test_a_bad_slo_header_is_a_400_in_openai_shape(server: Server, value: str) -> None:
    assert wait_until(lambda: idle(server), 120)
    response = short(server, KEY_EDF, **{"x-slo-ttft-ms": value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "x-slo-ttft-ms" and error["message"]


def test_earliest_deadline_first_within_a_class(server: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        blocker, held = hold_engine(server, pool)
        try:
            # Same key, same class: the later request has the earlier deadline.
            late = Stream(server, KEY_EDF, max_tokens=4, **{"x-slo-ttft-ms": "600000"})
            late_done = pool.submit(late.run)
            assert wait_until(lambda: health(server)["queued_requests"] == 1, 60)
            urgent = Stream(server, KEY_EDF, max_tokens=4, **{"x-slo-ttft-ms": "300000"})
            urgent_done = pool.submit(urgent.run)
            assert wait_until(lambda: health(server)["queued_requests"] == 2, 60)
        finally:
            blocker.close.set()
        assert held.result(60) == 200
        assert urgent_done.result(300) == 200 and late_done.result(300) == 200
    # One place in the engine: the first to stream is the first started.
    assert urgent.first_at < late.first_at


def test_a_request_predicted_to_start_late_is_refused_at_arrival(server: Server) -> None:
    # A rate estimate: short requests, each completing while it fills the engine's only
    # place (the estimate needs 4 in its 30 s window); their server-side inter-token time
    # measures one engine step.
    assert wait_until(lambda: idle(server), 120)
    steps = []
    for _ in range(4):
        response = httpx.post(f"{server.url}/v1/completions", headers=headers(KEY_BLOCK), timeout=300,
                              json={"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True})
        assert response.status_code == 200, response.text
        steps.append(response.json()["metrics"]["mean_itl_ms"])
    step_ms = max(steps)
    tokens = 240
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        blocker, held = hold_engine(server, pool)
        try:
            # The engine busy for `tokens` steps with no completion: the measured rate is at
            # most (completions in the window - 1) per that many steps, at most ~9 here (this
            # file's earlier tests), so the blocker's end is predicted >= tokens / 8 steps away.
            assert wait_until(lambda: blocker.chunks >= tokens, 300)
            objective_ms = max(1, int(tokens * step_ms / 24))  # a third of that
            arrival_before = metric_total(server, "vllm_deadline_refusals_total", when="arrival")
            queued_before = metric_total(server, "vllm_deadline_refusals_total", when="queued")
            prompts_before = metric_total(server, "vllm:prompt_tokens_total")
            response = short(server, KEY_EDF, **{"x-slo-ttft-ms": str(objective_ms)})
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            # Refused as it arrived, not after waiting out its deadline in the queue.
            assert metric_total(server, "vllm_deadline_refusals_total", when="arrival") == arrival_before + 1
            assert metric_total(server, "vllm_deadline_refusals_total", when="queued") == queued_before
            assert health(server)["engine_unfinished_requests"] == 1
            assert metric_total(server, "vllm:prompt_tokens_total") == prompts_before
        finally:
            blocker.close.set()
        assert held.result(60) == 200
