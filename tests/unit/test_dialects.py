"""Each API's error dialect (components/core/dialects.py): the JSON body and the error event
inside a stream, in the shape that API's clients parse."""

from __future__ import annotations

import json

import pytest

from components.core import errors
from components.core.dialects import ANTHROPIC, OPENAI, RESPONSES, dialect_for


def test_openai_body_and_stream_event() -> None:
    error = errors.ModelNotFound("no such model", param="model")
    assert OPENAI.body(error) == {"error": {"message": "no such model", "type": "invalid_request_error",
                                            "param": "model", "code": "model_not_found"}}
    assert json.loads(OPENAI.json(error)) == OPENAI.body(error)
    first, done = OPENAI.sse_event(errors.Unavailable("gone")).strip().split("\n\n")
    assert json.loads(first.removeprefix("data: "))["error"]["code"] == "service_unavailable"
    assert done == "data: [DONE]"


@pytest.mark.parametrize(("error", "kind"), [
    (errors.InvalidRequest("bad"), "invalid_request_error"),
    (errors.AuthenticationFailed("who"), "authentication_error"),
    (errors.PermissionDenied("no"), "permission_error"), (errors.NotFound("none"), "not_found_error"),
    (errors.PayloadTooLarge("big"), "request_too_large"), (errors.RateLimited("slow"), "rate_limit_error"),
    (errors.Overloaded("busy"), "overloaded_error"), (errors.GenerationTimeout("late"), "timeout_error"),
    (errors.EngineFailure("boom"), "api_error"), (errors.MethodNotAllowed("405"), "invalid_request_error"),
])
def test_anthropic_body_and_stream_event(error: errors.ServiceError, kind: str) -> None:
    assert ANTHROPIC.body(error) == {"type": "error", "error": {"type": kind, "message": error.message}}
    event = ANTHROPIC.sse_event(error)
    assert event.startswith("event: error\ndata: ") and event.endswith("\n\n")
    assert json.loads(event.split("data: ", 1)[1]) == ANTHROPIC.body(error)


def test_responses_body_is_openais_and_its_stream_event_is_numbered() -> None:
    error = errors.ServingFailure("failed")
    assert RESPONSES.body(error) == OPENAI.body(error)
    event = RESPONSES.sse_event(error, 7)
    assert event.startswith("event: error\ndata: ")
    assert json.loads(event.split("data: ", 1)[1]) == {
        "type": "error", "code": "internal_error", "message": "failed", "param": None, "sequence_number": 7}


def test_the_route_table_chooses_the_dialect() -> None:
    assert dialect_for("/v1/messages") is ANTHROPIC and dialect_for("/v1/messages/count_tokens") is ANTHROPIC
    assert dialect_for("/v1/responses/resp_1") is RESPONSES
    assert dialect_for("/v1/chat/completions") is OPENAI and dialect_for("/nowhere") is OPENAI


def test_the_old_names_render_as_the_dialects_do() -> None:
    error = errors.RateLimited("slow")
    assert errors.render_json(error) == OPENAI.json(error) and errors.render_sse(error) == OPENAI.sse_event(error)
    assert errors.render_anthropic_sse(error) == ANTHROPIC.sse_event(error)
    assert errors.anthropic_body(429, "slow") == ANTHROPIC.body(error)
