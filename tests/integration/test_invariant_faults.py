"""No request body can open the circuit breaker or count as an engine out-of-memory
(issue #24, rule 1), against the real service and engine.

vLLM's validation errors echo the client's input; the bridge attributes a fault by the
exception's type, never by its text, so a body full of "out of memory" is a 400.
"""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core.settings import ResilienceSettings
from tests.integration.conftest import MAIN_KEY, TOKENS_KEY, main_server_env

PHRASES = ("out of memory", "CUDA out of memory. Tried to allocate 2.00 GiB", "CUDA error: out of memory",
           "EngineDeadError", "EngineCore encountered an issue. See stack trace (above) for the root cause.",
           "engine dead")
ADMIN = {"authorization": f"Bearer {MAIN_KEY}"}


def breaker_setting(name: str, alias: str) -> float:
    """The main server's breaker setting: its environment's, else the default."""
    value = main_server_env("", "").get(alias)
    return float(value) if value is not None else float(ResilienceSettings.model_fields[name].default)


def breaker_state(http: httpx.Client) -> str:
    return str(http.get("/healthz").json()["circuit_breaker_state"])


def metric(http: httpx.Client, name: str) -> float:
    """A sample of one of the service's unlabelled series (0 when absent)."""
    for line in http.get("/metrics", headers=ADMIN).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_echoed_fault_words_are_a_400_and_leave_the_breaker_closed(http: httpx.Client) -> None:
    """The attack: more requests than the breaker needs to open, each with a `logit_bias`
    key vLLM echoes in its validation error; then another key's ordinary request."""
    calls = int(max(breaker_setting("breaker_window", "BREAKER_WINDOW"),
                    breaker_setting("breaker_min_calls", "BREAKER_MIN_CALLS")))
    oom_before = metric(http, "vllm_oom_events_total")
    assert breaker_state(http) == "closed"
    for index in range(calls):
        phrase = PHRASES[index % len(PHRASES)]
        reply = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logit_bias": {phrase: 1}})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "logit_bias"
    assert breaker_state(http) == "closed"
    assert metric(http, "vllm_circuit_breaker_state") == 0
    assert metric(http, "vllm_oom_events_total") == oom_before
    other = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {TOKENS_KEY}"},
                      json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2})
    assert other.status_code == 200, other.text


# Each route's smallest ordinary body (cheap: two tokens, nothing stored), and the string
# and number fields a client fills in. A path ending in KEY puts the value as a dict key.
KEY = object()
ROUTES: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
    "/v1/chat/completions": (
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        [("model",), ("user",), ("stop",), ("messages", 0, "content"), ("messages", 0, "role"),
         ("messages", 0, "name"), ("logit_bias", KEY), ("tool_choice",), ("reasoning_effort",),
         ("response_format", "type")],
        [("max_tokens",), ("temperature",), ("top_p",), ("n",), ("seed",), ("presence_penalty",),
         ("frequency_penalty",), ("top_logprobs",), ("logit_bias", "0")],
    ),
    "/v1/completions": (
        {"prompt": "Hi", "max_tokens": 2},
        [("model",), ("prompt",), ("stop",), ("suffix",), ("user",), ("logit_bias", KEY)],
        [("max_tokens",), ("temperature",), ("top_p",), ("n",), ("logprobs",), ("seed",), ("best_of",)],
    ),
    "/v1/messages": (
        {"model": "claude-3-5-haiku-latest", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
        [("model",), ("system",), ("messages", 0, "content"), ("messages", 0, "role"), ("stop_sequences", 0),
         ("metadata", "user_id"), ("tool_choice", "type")],
        [("max_tokens",), ("temperature",), ("top_k",), ("top_p",)],
    ),
    "/v1/responses": (
        {"input": "Hi", "max_output_tokens": 2, "store": False},
        [("model",), ("input",), ("instructions",), ("user",), ("previous_response_id",), ("tool_choice",)],
        [("max_output_tokens",), ("temperature",), ("top_p",), ("top_logprobs",)],
    ),
}


def with_value(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    import copy

    body = copy.deepcopy(body)
    node: Any = body
    for step, following in zip(path, path[1:]):
        if isinstance(node, dict) and step not in node:
            node[step] = [] if isinstance(following, int) else {}
        if isinstance(node, list) and step >= len(node):
            node.append({} if not isinstance(following, int) else [])
        node = node[step]
    last = path[-1]
    if last is KEY:
        node.clear()
        node[str(value)] = 1
    elif isinstance(node, list) and last >= len(node):
        node.append(value)
    else:
        node[last] = value
    return body


texts = st.one_of(st.sampled_from(PHRASES),
                  st.tuples(st.text(max_size=8), st.sampled_from(PHRASES), st.text(max_size=8)).map("".join))
numbers = st.one_of(st.sampled_from([-1, 0, 1, -(10**12), 10**12, 1e300, -1e300, 0.5]),
                    st.integers(min_value=-(10**6), max_value=10**6))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    route = draw(st.sampled_from(sorted(ROUTES)))
    base, strings, nums = ROUTES[route]
    base = {**base, "stream": draw(st.booleans())}
    if draw(st.booleans()):
        return route, with_value(base, draw(st.sampled_from(strings)), draw(texts))
    path = draw(st.sampled_from(nums))
    value: Any = draw(numbers)
    if path[0] in ("max_tokens", "max_output_tokens") and isinstance(value, int) and 2 < value < 10**6:
        value = 2  # an ordinary body stays cheap; limits are what is probed
    return route, with_value(base, path, value)


@settings(derandomize=True, max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_no_body_changes_the_breaker_or_the_oom_counter(http: httpx.Client, request: tuple[str, dict]) -> None:
    route, body = request
    oom_before = metric(http, "vllm_oom_events_total")
    reply = http.post(route, json=body)
    assert reply.status_code < 500, (route, body, reply.status_code, reply.text)
    for word in ("out_of_memory", "engine_dead", "circuit_open"):
        assert word not in reply.text, (route, body, reply.text)
    assert breaker_state(http) == "closed", (route, body)
    assert metric(http, "vllm_oom_events_total") == oom_before, (route, body)
