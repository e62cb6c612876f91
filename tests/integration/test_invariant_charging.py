"""A key is charged for what it was delivered (issue #24, rule 2), on the real engine.

Invariant, for every way a request ends: what the key's token windows are charged is at
least every token delivered to it (its prompts, and every token of every choice it
received) and at most what was reserved for it (prompts + n x max_tokens per prompt).
Delivered tokens are counted on the client from the token logprobs each chunk carries, so
they are exact token counts, not text. The charge is read from /admin/usage once the
request's access-log line is written, which the service writes after settling it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.edge.keys import key_id
from harness.server import Server, wait_until
from tests.integration.conftest import MAIN_KEY, MAX_NUM_SEQS

PROMPTS = ("The capital of France is", "Once upon a time, in a small village,")
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a long story about a cat."}]


@dataclass(frozen=True)
class Mix:
    route: str  # "chat" or "completion"
    n: int
    prompts: int  # completions only
    max_tokens: int
    stream: bool
    drop_after: int | None  # events read before the client goes away (streams only)


def day_tokens(http: httpx.Client) -> int:
    report = http.get("/admin/usage").json()
    mine = next(k for k in report["keys"] if k["key_id"] == key_id(MAIN_KEY))
    return int(mine["day"]["tokens"])


def prompt_tokens(http: httpx.Client, mix: Mix) -> int:
    """Every prompt of the request, as the engine's own tokenizer and template count them."""
    if mix.route == "chat":
        return len(http.post("/tokenize", json={"messages": QUESTION}).json()["tokens"])
    return sum(len(http.post("/tokenize", json={"prompt": p}).json()["tokens"]) for p in PROMPTS[: mix.prompts])


def body(mix: Mix) -> dict[str, Any]:
    common = {"n": mix.n, "max_tokens": mix.max_tokens, "ignore_eos": True, "stream": mix.stream}
    if mix.route == "chat":
        return {**common, "messages": QUESTION, "logprobs": True, "top_logprobs": 0}
    prompt = PROMPTS[0] if mix.prompts == 1 else list(PROMPTS[: mix.prompts])
    return {**common, "prompt": prompt, "logprobs": 0}


def tokens_in(choice: dict[str, Any], route: str) -> int:
    logprobs = choice.get("logprobs") or {}
    return len(logprobs.get("content") or []) if route == "chat" else len(logprobs.get("tokens") or [])


def send(server: Server, mix: Mix, request_id: str) -> int:
    """Send `mix`; the completion tokens the client received."""
    path = "/v1/chat/completions" if mix.route == "chat" else "/v1/completions"
    headers = {"authorization": f"Bearer {MAIN_KEY}", "x-request-id": request_id}
    if not mix.stream:
        answer = httpx.post(f"{server.url}{path}", json=body(mix), headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return sum(tokens_in(choice, mix.route) for choice in answer.json()["choices"])
    received = events = 0
    with httpx.stream("POST", f"{server.url}{path}", json=body(mix), headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = httpx.Response(200, content=line[len("data: "):]).json()
            received += sum(tokens_in(choice, mix.route) for choice in chunk.get("choices", []))
            events += 1
            if mix.drop_after is not None and events >= mix.drop_after:
                break  # the client goes away mid-stream, before any usage chunk
    return received


def charged_for(server: Server, http: httpx.Client, mix: Mix) -> tuple[int, int, int]:
    """(delivered, charged, reserved) for one request of `mix`."""
    prompt = prompt_tokens(http, mix)
    before = day_tokens(http)
    request_id = f"charge-{uuid.uuid4().hex[:12]}"
    completion = send(server, mix, request_id)
    # The access-log line is written after the request's tokens are settled.
    assert wait_until(lambda: f'"request_id": "{request_id}"' in server.log(), 60), request_id
    charged = day_tokens(http) - before
    reserved = prompt + mix.n * mix.prompts * mix.max_tokens
    delivered = (prompt if completion else 0) + completion
    return delivered, charged, reserved


def test_dropped_streams_with_many_choices_are_charged_every_choice(server: Server, http: httpx.Client) -> None:
    """The attack: n choices, ignore_eos, the stream closed before the usage chunk. The
    per-chunk usage counts the prompt and ONE choice: the other n - 1 were free."""
    mix = Mix("chat", n=MAX_NUM_SEQS, prompts=1, max_tokens=40, stream=True, drop_after=2 + 30 * MAX_NUM_SEQS)
    delivered, charged, reserved = charged_for(server, http, mix)
    assert delivered > mix.n * 20  # every choice got well under way
    assert delivered <= charged <= reserved, (delivered, charged, reserved)


mixes = st.builds(
    Mix,
    route=st.sampled_from(["chat", "completion"]),
    n=st.integers(1, 2),
    prompts=st.integers(1, 2),
    max_tokens=st.integers(1, 24),
    stream=st.booleans(),
    drop_after=st.one_of(st.none(), st.integers(1, 20)),
).map(lambda m: Mix(m.route, m.n, 1 if m.route == "chat" else m.prompts, m.max_tokens, m.stream,
                    m.drop_after if m.stream else None))


@pytest.mark.parametrize("examples", [12])
def test_every_request_is_charged_at_least_what_it_got_and_at_most_its_reservation(
    server: Server, http: httpx.Client, examples: int
) -> None:
    @settings(max_examples=examples, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(mixes)
    def check(mix: Mix) -> None:
        delivered, charged, reserved = charged_for(server, http, mix)
        assert delivered <= charged <= reserved, (mix, delivered, charged, reserved)
        if mix.drop_after is None:  # it ran to its end: exactly what it used
            assert charged == reserved  # ignore_eos: every choice ran to max_tokens

    check()
