"""The OpenAI Responses API through the official `openai` client, against the real engine
and model, behind the same front door; stored responses in the suite's real Redis."""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic import BaseModel

from harness.server import Server, wait_until
from tests.integration.conftest import MAIN_KEY, TOKENS_KEY

QUESTION = "What is the capital of France? Answer in one word."


def prompt_tokens(http: httpx.Client, messages: list[dict[str, str]]) -> int:
    """What the engine counts for this conversation (the chat template's prompt)."""
    # Special tokens as the Responses path renders them (a BOS for Mistral's and Llama's).
    reply = http.post("/tokenize", json={"messages": messages, "add_generation_prompt": True,
                                         "add_special_tokens": True})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["count"])


def test_create_answers_with_usage_and_our_id(client: openai.OpenAI, http: httpx.Client) -> None:
    reply = client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=20, temperature=0)
    assert reply.status == "completed"
    assert "Paris" in reply.output_text
    assert reply.id.startswith("resp_")
    assert reply.usage.input_tokens == prompt_tokens(http, [{"role": "user", "content": QUESTION}])
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens


def test_stream_sends_the_responses_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(input=QUESTION, max_output_tokens=20, temperature=0, stream=True,
                                          model="gpt-4o"))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert "Paris" in text and final.output_text == text
    assert final.usage.output_tokens > 0
    # Stored before its last event went out: readable at once.
    assert client.responses.retrieve(final.id).output_text == text


def test_a_follow_up_sees_the_earlier_turn(client: openai.OpenAI, http: httpx.Client) -> None:
    first_input = "My name is Ada. Say hello to me."
    first = client.responses.create(model="gpt-4o", input=first_input, instructions="Be brief.",
                                    max_output_tokens=16, temperature=0)
    follow = client.responses.create(model="gpt-4o", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=8, temperature=0)
    assert follow.previous_response_id == first.id
    # The engine's prompt is the whole conversation (instructions are not carried over).
    conversation = [{"role": "user", "content": first_input}, {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "What is my name?"}]
    assert follow.usage.input_tokens == prompt_tokens(http, conversation)
    # Chains go on: a third turn sees both.
    third = client.responses.create(model="gpt-4o", input="Thanks.", previous_response_id=follow.id,
                                    max_output_tokens=4, temperature=0)
    conversation += [{"role": "assistant", "content": follow.output_text}, {"role": "user", "content": "Thanks."}]
    assert third.usage.input_tokens == prompt_tokens(http, conversation)


def test_only_the_creating_key_can_read_continue_or_delete(server: Server, client: openai.OpenAI) -> None:
    mine = client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=4)
    other = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKENS_KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.NotFoundError) as read:
        other.responses.retrieve(mine.id)
    assert read.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as follow:
        other.responses.create(model="gpt-4o", input="Go on.", previous_response_id=mine.id, max_output_tokens=4)
    assert follow.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner
    client.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(mine.id)


class Capital(BaseModel):
    country: str
    city: str


def test_structured_output_parses_into_a_pydantic_model(client: openai.OpenAI) -> None:
    reply = client.responses.parse(model="gpt-4o", input=QUESTION, text_format=Capital, max_output_tokens=300,
                                   temperature=0)
    assert isinstance(reply.output_parsed, Capital)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=4, store=False)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [({"input": QUESTION, "background": True}, 400, {"param": "background", "code": "unsupported_parameter"}),
     ({"input": QUESTION, "previous_response_id": "resp_nope"}, 404, {"param": "previous_response_id"}),
     ({"input": QUESTION, "max_output_tokens": 100_000}, 400, {"code": "context_length_exceeded"}),
     ({"input": 7}, 400, {"type": "invalid_request_error"})],
)
def test_bad_requests_get_openai_shaped_4xx(http: httpx.Client, body: dict, status: int, expected: dict) -> None:
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert {k: error[k] for k in expected} == expected, error


def test_the_client_cannot_choose_the_response_id(http: httpx.Client) -> None:
    """A chosen id could overwrite another key's stored response."""
    reply = http.post("/v1/responses", json={"input": QUESTION, "max_output_tokens": 2, "request_id": "resp_mine"})
    assert reply.status_code == 200 and reply.json()["id"] != "resp_mine"


def test_responses_are_metered_like_every_generation(server: Server, client: openai.OpenAI) -> None:
    def completed() -> float:
        text = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {MAIN_KEY}"}, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm_request_total{") and 'endpoint="/v1/responses"' in line
                   and 'status="200"' in line)

    before = completed()
    client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=2)
    # Counted once the last byte is out, which the client may see first.
    assert wait_until(lambda: completed() == before + 1, timeout=10)
