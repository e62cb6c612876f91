"""/metrics (ours, BentoML's and vLLM's together), /healthz, /debug/runtime, JSON access logs."""

from __future__ import annotations

import json
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from components.core.routes import LABELS
from tests.integration.conftest import MAIN_KEY

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def scrape(server) -> dict[str, object]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families, family: str, suffix: str = "", **labels: str) -> float:
    total = 0.0
    for sample in families[family].samples:
        if sample.name == family + suffix and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
    return total


def test_metrics_have_all_names_and_types_and_move_by_the_right_amounts(server, client: openai.OpenAI) -> None:
    before = scrape(server)
    models_before = sample_value(before, "vllm_request", "_total", endpoint="/v1/models", status="200") if "vllm_request" in before else 0
    for _ in range(3):
        client.models.list()
    client.chat.completions.create(model="gpt-4", messages=FRANCE, max_tokens=5, temperature=0)
    list(client.chat.completions.create(model="gpt-4", messages=FRANCE, max_tokens=5, temperature=0, stream=True))
    after = scrape(server)
    expected_types = {
        "vllm_request": "counter",
        "vllm_request_duration_seconds": "histogram",
        "vllm_active_requests": "gauge",
        "vllm_token_throughput": "histogram",
        "vllm_ttft_seconds": "histogram",
        "vllm_queue_size": "gauge",
        "vllm_circuit_breaker_state": "gauge",
        "vllm_concurrent_connections": "gauge",
        "vllm_warm_cache_hits": "counter",
        "vllm_oom_events": "counter",
    }
    for name, kind in expected_types.items():
        assert name in after, name
        assert after[name].type == kind, (name, after[name].type)
    assert sample_value(after, "vllm_request", "_total", endpoint="/v1/models", status="200") == models_before + 3
    assert sample_value(after, "vllm_ttft_seconds", "_count", stream="true") >= 1
    assert sample_value(after, "vllm_ttft_seconds", "_count", stream="false") >= 1
    assert sample_value(after, "vllm_circuit_breaker_state") == 0
    # No GPU here: the GPU gauges are absent rather than zero.
    assert "vllm_gpu_memory_usage_gb" not in after
    # BentoML's own and vLLM's engine metrics share the endpoint.
    assert any(name.startswith("bentoml_") for name in after)
    assert "vllm:num_requests_running" in after and "vllm:prompt_tokens" in after
    # Bounded labels: unknown paths are "other", probes are not counted.
    httpx.get(f"{server.url}/v1/no-such-{MAIN_KEY[-4:]}", headers={"authorization": f"Bearer {MAIN_KEY}"}, timeout=10)
    paths = {s.labels.get("endpoint") for s in scrape(server)["vllm_request"].samples}
    # Bounded: the routes' own labels (the metrics module's table), ids folded, the rest "other".
    assert paths <= LABELS, paths


def test_healthz_matches_the_documented_schema(server) -> None:
    health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    assert health["status"] == "healthy"
    assert health["model_loaded"] is True
    for key, kind in {
        "timestamp": str, "active_requests": int, "total_requests": int, "circuit_breaker_state": str,
        "engine_unfinished_requests": int, "queued_requests": int, "uptime_seconds": float,
    }.items():
        assert isinstance(health[key], kind), key
    for key in ("gpu_memory_usage_gb", "gpu_utilization_percent", "gpu_temperature_celsius"):
        assert health[key] is None
    cache = health["warmup_cache"]
    assert set(cache) == {"enabled", "current_key", "is_cached", "total_cached_configs", "cache_dir"}
    assert cache["enabled"] is False  # eager mode on CPU: nothing compiled


def test_debug_runtime_needs_a_key_and_redacts_secrets(server, http: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/debug/runtime", timeout=10).status_code == 401
    info = http.get("/debug/runtime").json()
    assert info["versions"]["vllm"].startswith("0.32")
    assert info["model"]["served_name"] == "SmolLM2-135M-Instruct"
    assert "--max-model-len" in info["engine_args"]
    text = json.dumps(info)
    assert MAIN_KEY not in text and "redis://127.0.0.1" in text


def test_request_id_round_trips_into_the_json_access_log(server, http: httpx.Client) -> None:
    rid = "obs-test-7f3a91"
    response = http.post(
        "/v1/chat/completions", json={"model": "gpt-4", "messages": FRANCE, "max_tokens": 3},
        headers={"x-request-id": rid, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    assert response.headers["x-request-id"] == rid
    access: list[dict] = []
    deadline = time.monotonic() + 10  # the worker's output reaches the file through BentoML's process manager
    while not access and time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{") and rid in line]
        access = [line for line in lines if line.get("message") == "request"]
        time.sleep(0.2)
    assert len(access) == 1, access
    entry = access[0]
    assert entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["model"] == "SmolLM2-135M-Instruct" and entry["key_id"].startswith("key-")
    assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] == 3
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry["duration_ms"] > 0 and entry["level"] == "INFO" and "timestamp" in entry
