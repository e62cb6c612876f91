"""API keys, rate limits (shared through a real Redis), admission, body limits and CORS,
against the real service."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from components.storage.guard import RETRY_S
from harness.server import free_port, wait_until
from tests.integration.conftest import (
    ALL_KEYS,
    LIMITED_KEY,
    LIMITED_N,
    MAIN_KEY,
    MAX_NUM_SEQS,
    MAX_QUEUE_SIZE,
    RETRY_KEY,
    SHARED_KEY,
    TOKENS_KEY,
    TOKENS_PER_MINUTE,
    WINDOW_MINUTES,
    running_redis,
)
from tests.integration.frontdoor import front_door, get_models
from tests.integration.test_storage_outage import frozen, wait_for_heartbeat
from tests.integration.windows import in_one_minute

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def openai_client(server, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=retries, timeout=120)


def auth_failures(server) -> dict[str, float]:
    """vllm_auth_failures_total by reason."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        if family.name == "vllm_auth_failures":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = sample.value
    return counts


def test_missing_and_wrong_keys_get_401_invalid_api_key(server) -> None:
    before = auth_failures(server)
    with pytest.raises(openai.AuthenticationError) as info:
        openai_client(server, "sk-wrong-key-0000").models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    assert info.value.body["type"] == "invalid_request_error"
    # The SDK refuses to send no key at all: a plain request does.
    missing = httpx.get(f"{server.url}/v1/models", timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"] == {
        "message": missing.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    not_admin = httpx.get(f"{server.url}/debug/runtime", headers={"authorization": f"Bearer {LIMITED_KEY}"}, timeout=10)
    assert not_admin.status_code == 403
    # Counted by reason, for the security alerts (monitoring/alerts.yml).
    after = auth_failures(server)
    for reason in ("invalid", "missing", "not_admin"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, (reason, before, after)


def test_good_key_by_bearer_and_by_x_api_key(server) -> None:
    assert openai_client(server, MAIN_KEY).models.list().data
    response = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": MAIN_KEY}, timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/metrics"])
def test_probes_and_metrics_are_open(server, path: str) -> None:
    assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/v1/nope", "/debug/runtime", "/"])
def test_everything_else_needs_a_key(server, path: str) -> None:
    response = httpx.post(f"{server.url}{path}", json={}, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_cors_preflight_needs_no_key_and_errors_carry_cors_headers(server) -> None:
    origin = "https://app.example.com"
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    denied = httpx.get(f"{server.url}/v1/models", headers={"origin": origin}, timeout=10)
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == origin
    exposed = denied.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed
    other = httpx.get(f"{server.url}/v1/models", headers={"origin": "https://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers


def test_per_key_limit_admits_exactly_n_with_openai_headers(server) -> None:
    headers = {"authorization": f"Bearer {LIMITED_KEY}"}
    remaining = []
    for _ in range(LIMITED_N):
        ok = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=10)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == str(LIMITED_N)
        assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
        remaining.append(int(ok.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(LIMITED_N - 1, -1, -1))
    refused = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=10)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_MINUTES * 60
    assert refused.headers["x-request-id"]


def test_sdk_retry_honours_retry_after(server) -> None:
    first = openai_client(server, RETRY_KEY).models.list()
    assert first.data
    started = time.monotonic()
    # The second call is refused (limit 1 per window); the SDK waits retry-after and succeeds.
    again = openai_client(server, RETRY_KEY, retries=2).models.list()
    assert again.data
    assert time.monotonic() - started >= 1.0


def test_token_limit_headers_move_by_exact_usage(server) -> None:
    client = openai_client(server, TOKENS_KEY)

    def two_readings() -> tuple[int, int, int]:
        first = client.chat.completions.with_raw_response.create(messages=FRANCE, model="gpt-4", max_tokens=5,
                                                                 temperature=0)
        assert first.headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MINUTE)
        second = client.models.with_raw_response.list()
        return (first.parse().usage.total_tokens, int(first.headers["x-ratelimit-remaining-tokens"]),
                int(second.headers["x-ratelimit-remaining-tokens"]))

    # The token window is the current minute: both readings in the same one, however long
    # they take (before: they had to fit the 15 s left after second 45).
    usage, before, after = in_one_minute(two_readings, at_a_minute_start=False)
    assert before - after == usage  # reserved, then settled to the exact count


def test_two_instances_sharing_redis_admit_the_limit_once(server, redis_url: str) -> None:
    """The real service and a second front door in-process share one Redis."""
    with front_door(
        ALL_KEYS,
        API_KEY_LIMITS=f"{SHARED_KEY}:{LIMITED_N}",
        RATE_LIMIT_STORAGE_URI=redis_url,
        RATE_LIMIT_WINDOW_MINUTES=str(WINDOW_MINUTES),
    ) as second:
        statuses = [get_models(server.url if i % 2 == 0 else second, SHARED_KEY).status_code for i in range(3 * LIMITED_N)]
    assert statuses.count(200) == LIMITED_N, statuses
    assert statuses.count(429) == 2 * LIMITED_N, statuses


def test_unreachable_redis_limits_each_replica_to_its_share_or_refuses_when_set() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with front_door((MAIN_KEY,), RATE_LIMIT_STORAGE_URI=dead, DEFAULT_RATE_LIMIT="4", RATE_LIMIT_REPLICAS="2") as url:
        started = time.monotonic()
        responses = [get_models(url, MAIN_KEY) for _ in range(4)]
        # Before: all four went through (no limit at all while Redis was down).
        assert [r.status_code for r in responses] == [200, 200, 429, 429]
        assert responses[0].headers["x-ratelimit-limit-requests"] == "2"  # this replica's share
        assert time.monotonic() - started < 10
    with front_door((MAIN_KEY,), RATE_LIMIT_STORAGE_URI=dead, RATE_LIMIT_FAIL_OPEN="false") as url:
        refused = get_models(url, MAIN_KEY)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "rate_limiter_unavailable"
        assert refused.headers["retry-after"]


def test_paused_redis_degrades_to_each_replicas_share_and_recovers(tmp_path, caplog) -> None:
    """Two replicas share a real redis-server, which is then frozen (SIGSTOP: every call times
    out) and resumed. Before the fallback, every request during the pause went through."""
    limit = 6
    # Heartbeats once a minute: each replica's first beat (at its first request) is all.
    env = {"DEFAULT_RATE_LIMIT": str(limit), "RATE_LIMIT_REPLICAS": "2", "RATE_LIMIT_STORAGE_TIMEOUT": "0.2",
           "RATE_LIMIT_HEARTBEAT_SECONDS": "60"}
    with running_redis(tmp_path) as (url, redis_process), \
            front_door((MAIN_KEY,), RATE_LIMIT_STORAGE_URI=url, **env) as a, \
            front_door((MAIN_KEY,), RATE_LIMIT_STORAGE_URI=url, **env) as b:
        assert [get_models(a, MAIN_KEY).status_code for _ in range(2)] == [200, 200]  # through Redis
        assert get_models(b, MAIN_KEY).status_code == 200
        client = redis.Redis.from_url(url)
        wait_for_heartbeat(client, 2)
        caplog.clear()
        with frozen(redis_process, client) as received:
            started = time.monotonic()
            during = {door: [get_models(door, MAIN_KEY).status_code for _ in range(limit)] for door in (a, b)}
            paused_for = time.monotonic() - started
        client.close()
        # a had used 2 of its share of 3 before the pause; b had used 1.
        assert during[a] == [200] + [429] * (limit - 1), during
        assert during[b] == [200] * 2 + [429] * (limit - 2), during
        # Calls that reached the frozen server (each one timed out), counted by the server: one
        # per replica and rest after a failure, not one per request (that would be 12).
        assert received[0] <= 2 * (1 + int(paused_for / RETRY_S)), (received, paused_for)
        lines = [r.getMessage() for r in caplog.records if r.name == "components.storage.guard"]
        assert sum("unavailable" in line for line in lines) == 2, lines  # once per replica and outage
        # Redis decides again once each replica tries it (RETRY_S after its failure).
        # Its window holds the 3 requests from before the pause, and may hold the replicas'
        # timed-out calls, which Redis runs when resumed. Locally, both shares are used up.
        resumed = time.monotonic()
        assert wait_until(lambda: time.monotonic() > resumed + RETRY_S, 10)
        after = [get_models(a if i % 2 else b, MAIN_KEY).status_code for i in range(2 * limit)]
        assert 0 < after.count(200) <= limit - 3, after
        assert any("is back" in r.getMessage() for r in caplog.records if r.name == "components.storage.guard")


def test_queue_overflow_gets_503_at_once_and_admitted_streams_complete(server) -> None:
    burst = 4 * (MAX_NUM_SEQS + MAX_QUEUE_SIZE)
    body = {"model": "gpt-4", "messages": FRANCE, "max_tokens": 48, "stream": True, "ignore_eos": True}
    headers = {"authorization": f"Bearer {MAIN_KEY}"}

    # One client made beforehand: a client per request builds its own TLS context, and 4 x 8
    # of those, serialized by the GIL on 2 cores, delayed the last requests by seconds before
    # they left (the server's own log showed every 503 within 55 ms).
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=burst))

    def one(_: int) -> tuple[int, str, dict[str, str], float, float]:
        """(status, body, headers, when its status came, when its body ended)."""
        with client.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
            answered = time.monotonic()
            text = "".join(r.iter_text())
            return r.status_code, text, dict(r.headers), answered, time.monotonic()

    with client, concurrent.futures.ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(one, range(burst)))
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(admitted) + len(refused) == burst, [r[0] for r in results]
    assert refused, "a burst beyond MAX_NUM_SEQS + MAX_QUEUE_SIZE must be refused in part"
    assert len(admitted) >= MAX_NUM_SEQS + MAX_QUEUE_SIZE
    for status, text, headers_, _, _ in refused:
        assert '"server_overloaded"' in text and headers_["retry-after"]
    # At once: a 503 is decided while the server is full, not after waiting for room. Full
    # means MAX_QUEUE_SIZE requests waiting in the fair queue, not yet in the engine, let
    # alone through their 48 tokens: at least that many admitted streams end after each 503
    # has come back, however fast or slow the host (before: the slowest 503 against the
    # fastest stream, two durations, each timed from its own thread's start).
    for _, _, _, refused_at, _ in refused:
        ended_later = sum(1 for *_, ended in admitted if ended > refused_at)
        assert ended_later >= MAX_QUEUE_SIZE, (ended_later, sorted(round(r[4] - refused_at, 3) for r in admitted))
    for _, text, _, _, _ in admitted:
        assert text.rstrip().endswith("data: [DONE]")
        assert '"finish_reason":"length"' in text


def test_oversized_body_is_413(server) -> None:
    big = {"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=big, headers={"authorization": f"Bearer {MAIN_KEY}"}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
