"""One trace per request: the front door's spans and vLLM's own request span under one
trace id, received by a real OTLP/HTTP receiver (harness/otlp_receiver.py)."""

from __future__ import annotations

import json
import secrets

import httpx

from harness.otlp_receiver import OtlpReceiver
from harness.server import Server, wait_until

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def spans_by_name(otlp: OtlpReceiver, trace_id: str, expected: set[str]) -> dict[str, dict]:
    """The trace's spans once every expected one has arrived (the exporters batch)."""
    assert wait_until(lambda: expected <= {s["name"] for s in otlp.trace(trace_id)}, timeout=30), \
        [s["name"] for s in otlp.trace(trace_id)]
    return {s["name"]: s for s in otlp.trace(trace_id)}


def test_one_trace_holds_the_front_door_and_the_engine(http: httpx.Client, otlp: OtlpReceiver) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    reply = http.post("/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 4},
                      headers={"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "trace-me-1"})
    assert reply.status_code == 200
    spans = spans_by_name(otlp, trace_id, {"POST /v1/chat/completions", "auth", "rate_limit", "queue", "engine",
                                           "llm_request"})
    server = spans["POST /v1/chat/completions"]
    assert server["parent_span_id"] == parent  # continues the client's trace
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["request.id"] == "trace-me-1"
    assert server["attributes"]["llm.completion_tokens"] == reply.json()["usage"]["completion_tokens"]
    for name in ("auth", "rate_limit", "queue", "engine"):
        assert spans[name]["parent_span_id"] == server["span_id"], name
    # vLLM's own span, from the engine's side, under the same request.
    assert spans["llm_request"]["parent_span_id"] == server["span_id"]


def test_a_request_without_traceparent_starts_a_trace_the_access_log_names(server: Server, http: httpx.Client,
                                                                           otlp: OtlpReceiver) -> None:
    reply = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2},
                      headers={"x-request-id": "trace-me-2"})
    assert reply.status_code == 200

    def server_span() -> dict | None:
        return next((s for s in list(otlp.spans) if s["attributes"].get("request.id") == "trace-me-2"), None)

    assert wait_until(lambda: server_span() is not None, timeout=30)
    span = server_span()
    assert span is not None and span["parent_span_id"] == "" and span["name"] == "POST /v1/completions"

    def logged() -> dict | None:
        for line in server.log().splitlines():
            if '"trace-me-2"' in line and line.startswith("{"):
                record = json.loads(line)
                if record.get("message") == "request":
                    return record
        return None

    assert wait_until(lambda: logged() is not None, timeout=10)
    assert logged()["trace_id"] == span["trace_id"]  # type: ignore[index]
