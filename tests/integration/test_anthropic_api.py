"""The Anthropic Messages API, through the official `anthropic` client, against the real
engine and model, behind the same front door as the OpenAI routes."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from harness.server import Server
from tests.integration.conftest import MAIN_KEY

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
CLAUDE = "claude-sonnet-4-5"  # a default alias of the served model
GREEDY = {"temperature": 0}  # the SDK no longer takes temperature as an argument


@pytest.fixture(scope="module")
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    # The SDK sends the key as x-api-key, as Anthropic's API wants it.
    with anthropic.Anthropic(base_url=server.url, api_key=MAIN_KEY, max_retries=0, timeout=120) as client:
        yield client


def test_messages_create_answers_with_exact_usage(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    reply = claude.messages.create(model=CLAUDE, max_tokens=20, messages=FRANCE, extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant"
    assert "Paris" in reply.content[0].text
    assert reply.stop_reason == "end_turn"
    # The same prompt through the chat route: the same counts.
    chat = http.post("/v1/chat/completions",
                     json={"model": "gpt-4", "messages": FRANCE, "max_tokens": 20, "temperature": 0}).json()
    assert reply.usage.input_tokens == chat["usage"]["prompt_tokens"] - reply.usage.cache_read_input_tokens
    assert reply.usage.output_tokens == chat["usage"]["completion_tokens"]


def test_messages_stream_sends_anthropic_events(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=CLAUDE, max_tokens=20, messages=FRANCE, extra_body=GREEDY,
                                system="You answer briefly.") as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text
    # Greedy output depends on the numerics of a prefix-cache hit or miss: either way the
    # stop reason must say which end it reached.
    assert final.stop_reason == ("max_tokens" if final.usage.output_tokens == 20 else "end_turn"), text
    assert final.usage.output_tokens > 0


def test_max_tokens_ends_with_its_stop_reason(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(model=CLAUDE, max_tokens=2, messages=FRANCE)
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 2


def test_count_tokens_matches_what_the_engine_counts(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=CLAUDE, messages=FRANCE)
    reply = claude.messages.create(model=CLAUDE, max_tokens=1, messages=FRANCE)
    assert counted.input_tokens == reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)


def test_errors_take_anthropics_shape(server: Server, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        anthropic.Anthropic(base_url=server.url, api_key="sk-wrong-000", max_retries=0).messages.create(
            model=CLAUDE, max_tokens=5, messages=FRANCE)
    assert bad_key.value.status_code == 401
    assert bad_key.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                             "message": bad_key.value.body["error"]["message"]}}
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=FRANCE)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    # A body Anthropic's schema refuses (max_tokens is required), and one past the context.
    missing = httpx.post(f"{server.url}/v1/messages", json={"model": CLAUDE, "messages": FRANCE},
                         headers={"x-api-key": MAIN_KEY}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "invalid_request_error"
    # A block vLLM's schema lets through but its converter cannot read: the client's 400,
    # not a 500, on both routes.
    odd = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                         "content": [{"type": "image", "source": "x"}]}]}]
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        refused = httpx.post(f"{server.url}{path}", json={"model": CLAUDE, "max_tokens": 5, "messages": odd},
                             headers={"x-api-key": MAIN_KEY}, timeout=30)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as too_long:
        claude.messages.create(model=CLAUDE, max_tokens=100_000, messages=FRANCE)
    assert too_long.value.body["error"]["type"] == "invalid_request_error"
    assert "4096" in too_long.value.body["error"]["message"]


def test_the_route_is_counted_like_the_others(server: Server, claude: anthropic.Anthropic) -> None:
    def served() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm_request_total{") and 'endpoint="/v1/messages"' in line
                   and 'status="200"' in line)

    before = served()
    claude.messages.create(model=CLAUDE, max_tokens=1, messages=FRANCE)
    assert served() == before + 1


WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city.", "strict": True,
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {"type": "tool", "name": "get_weather"}


def test_a_forced_tool_comes_back_as_a_tool_use_block(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(model=CLAUDE, max_tokens=100, messages=WEATHER, tools=[WEATHER_TOOL],
                                   tool_choice=FORCED, extra_body=GREEDY)
    calls = [block for block in reply.content if block.type == "tool_use"]
    assert [call.name for call in calls] == ["get_weather"]
    assert isinstance(calls[0].input["city"], str)
    assert reply.stop_reason == "tool_use"


def test_arguments_that_are_no_tool_input_come_back_as_text(claude: anthropic.Anthropic) -> None:
    # Without `strict` this model writes a bare JSON string as the arguments; cut short by
    # max_tokens, no JSON at all. Neither may fail the answer (vLLM's converter would).
    loose = {key: value for key, value in WEATHER_TOOL.items() if key != "strict"}
    reply = claude.messages.create(model=CLAUDE, max_tokens=100, messages=WEATHER, tools=[loose],
                                   tool_choice=FORCED, extra_body=GREEDY)
    assert all(block.type != "tool_use" or isinstance(block.input, dict) for block in reply.content)
    used = any(block.type == "tool_use" for block in reply.content)
    assert reply.stop_reason == ("tool_use" if used else "end_turn")
    cut = claude.messages.create(model=CLAUDE, max_tokens=3, messages=WEATHER, tools=[WEATHER_TOOL],
                                 tool_choice=FORCED)
    assert cut.stop_reason == "max_tokens"
    assert [block.type for block in cut.content] == ["text"] and cut.content[0].text
