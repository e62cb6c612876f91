"""The OpenAI-compatible API, through the official client, against the real engine and model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from components.vllm_adapter import bundled_model

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_chat_completion_answers_with_the_real_model(client: openai.OpenAI, served_model: str) -> None:
    reply = client.chat.completions.create(model=served_model, messages=FRANCE, temperature=0, max_tokens=20)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_usage_is_exact_for_the_served_tokenizer(client: openai.OpenAI, served_model: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model.converted_dir("/tmp/vllm_cache")))
    expected_prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected_prompt, list):
        expected_prompt = expected_prompt["input_ids"]
    reply = client.chat.completions.create(model=served_model, messages=FRANCE, temperature=0, max_tokens=3)
    assert reply.usage.prompt_tokens == len(expected_prompt)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_chat_stream_ends_with_usage_and_done(client: openai.OpenAI, served_model: str) -> None:
    stream = client.chat.completions.create(
        model=served_model,
        messages=FRANCE,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_raw_stream_is_sse_terminated_by_done(http: httpx.Client) -> None:
    body = {"messages": FRANCE, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_completions_plain_and_streaming(client: openai.OpenAI, served_model: str) -> None:
    reply = client.completions.create(model=served_model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in reply.choices[0].text
    assert reply.usage.completion_tokens == 4
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=served_model, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == reply.choices[0].text


def test_models_lists_served_model_and_aliases(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == bundled_model.SERVED_NAME
    assert {"gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini", "text-davinci-003"} <= set(ids)
    assert client.models.retrieve("gpt-4").id == "gpt-4"


def test_alias_is_served_by_the_real_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-3.5-turbo", messages=FRANCE, temperature=0, max_tokens=20)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == bundled_model.SERVED_NAME


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"


def test_max_tokens_beyond_context_is_400(client: openai.OpenAI, served_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=served_model, messages=FRANCE, max_tokens=1_000_000)
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.body["param"] == "max_tokens"


def test_prompt_beyond_context_is_400(client: openai.OpenAI, served_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=served_model, prompt="hello " * 5000, max_tokens=1)
    assert info.value.body["code"] == "context_length_exceeded"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        # strict: the arguments are constrained to the schema, as with OpenAI's structured calls.
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def tool_parser_runs(http: httpx.Client) -> dict[str, float]:
    """vLLM's count of its tool parser's runs on non-streamed chat completions, by outcome
    (`tool_call`, `no_tool_call`)."""
    name = "vllm:tool_call_parser_invocations_total{"
    counts: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name) and 'mode="non_streaming"' in line and 'request_type="chat_completions"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    assert set(counts) == {"tool_call", "no_tool_call"}, f"{name} is not on /metrics: {counts}"
    return counts


def test_auto_tool_choice_goes_through_the_parser(client: openai.OpenAI, served_model: str,
                                                  http: httpx.Client) -> None:
    before = tool_parser_runs(http)
    reply = client.chat.completions.create(
        model=served_model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        temperature=0,
        max_tokens=60,
    )
    message = reply.choices[0].message
    # A 135M model may answer or call. Either way the parser ran on this reply, once, and
    # the reply is what it decided (before: any non-empty text passed, parser or not).
    outcome = "tool_call" if message.tool_calls else "no_tool_call"
    after = tool_parser_runs(http)
    assert {k: after[k] - before[k] for k in after} == {outcome: 1, **{k: 0 for k in after if k != outcome}}, \
        (outcome, before, after)
    if message.tool_calls:
        assert reply.choices[0].finish_reason == "tool_calls"
        call = message.tool_calls[0]
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str), call.function.arguments
    else:
        # Text, and none of the Hermes call markup the parser would have taken out.
        assert message.content and "<tool_call>" not in message.content, message.content


def test_named_tool_choice_returns_a_tool_call(client: openai.OpenAI, served_model: str) -> None:
    reply = client.chat.completions.create(
        model=served_model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str), call.function.arguments


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", id="malformed-json"),
    pytest.param(b"[1, 2]", "application/json", id="array-body"),
    pytest.param(b'{"messages": "hi"}', "application/json", id="messages-not-list"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}', "application/json", id="max-tokens-str"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -3}', "application/json", id="temperature"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000}', "application/json", id="huge-n"),
    pytest.param(b'{"messages": []}', "application/json", id="no-messages"),
    pytest.param(b'{"messages": [{"role": "wizard", "content": "hi"}]}', "application/json", id="bad-role"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}]}', "text/plain", id="wrong-content-type"),
    pytest.param(b"\xff\xfe\xfa", "application/json", id="invalid-utf8"),
    pytest.param(b"", "application/json", id="empty-body"),
]


@pytest.mark.parametrize(("body", "content_type"), BAD_BODIES)
def test_bad_chat_bodies_get_openai_shaped_4xx(http: httpx.Client, body: bytes, content_type: str) -> None:
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_unknown_route_and_wrong_method_are_openai_shaped(http: httpx.Client) -> None:
    missing = http.get("/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = http.delete("/v1/models")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_request_id_is_returned_and_client_value_kept(http: httpx.Client) -> None:
    mine = http.get("/v1/models", headers={"x-request-id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    generated = http.get("/v1/models", headers={"x-request-id": "bad id;x"})
    assert generated.headers["x-request-id"] != "bad id;x" and len(generated.headers["x-request-id"]) == 32


def test_tokenize_and_detokenize_round_trip(http) -> None:  # type: ignore[no-untyped-def]
    text = "The capital of France is Paris."
    tokens = http.post("/tokenize", json={"model": "gpt-4", "prompt": text, "add_special_tokens": False}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] > 0
    back = http.post("/detokenize", json={"model": "gpt-4", "tokens": tokens["tokens"]})
    assert back.status_code == 200 and back.json()["prompt"] == text


def test_tokenize_counts_a_chat_as_the_engine_does(http, client) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    counted = http.post("/tokenize", json={"model": "gpt-4", "messages": messages}).json()["count"]
    usage = client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=1).usage
    assert counted == usage.prompt_tokens


def test_tokenizer_routes_refuse_bad_input_cleanly(http, server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.post(f"{server.url}/tokenize", json={"prompt": "hi"}, timeout=10).status_code == 401
    unknown = http.post("/tokenize", json={"model": "no-such-model", "prompt": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    for tokens in ([10**9], [-1], "abc"):
        bad = http.post("/detokenize", json={"model": "gpt-4", "tokens": tokens})
        assert bad.status_code == 400, (tokens, bad.status_code, bad.text)
        assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


class Capital(BaseModel):
    country: str
    city: str


def test_structured_output_parses_into_a_pydantic_model(client) -> None:  # type: ignore[no-untyped-def]
    completion = client.chat.completions.parse(
        model="gpt-4", temperature=0, max_tokens=60, response_format=Capital,
        messages=[{"role": "user", "content": "Give the country France and its capital as JSON."}],
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.country and parsed.city


def test_json_object_mode_returns_json(client) -> None:  # type: ignore[no-untyped-def]
    reply = client.chat.completions.create(
        model="gpt-4", temperature=0, max_tokens=60, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply with a JSON object with a key 'capital' for France."}],
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_usage_reports_prompt_tokens_served_by_the_prefix_cache(client) -> None:  # type: ignore[no-untyped-def]
    # Long enough to fill whole cache blocks; a second identical prompt finds them cached.
    prompt = "Here is a list of European capitals and their countries. " * 40
    first = client.completions.create(model="gpt-4", prompt=prompt, max_tokens=1, temperature=0)
    second = client.completions.create(model="gpt-4", prompt=prompt, max_tokens=1, temperature=0)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 256
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached <= second.usage.prompt_tokens, second.usage
