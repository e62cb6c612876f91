from __future__ import annotations

import json

from components.core import errors


def test_body_has_openai_shape() -> None:
    body = errors.ModelNotFound("no such model", param="model").body()
    assert body == {
        "error": {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    }


def test_sse_rendering_ends_the_stream() -> None:
    text = errors.render_sse(errors.Unavailable("gone"))
    first, done = text.strip().split("\n\n")
    assert json.loads(first.removeprefix("data: "))["error"]["code"] == "service_unavailable"
    assert done == "data: [DONE]"


def test_vllms_wording_is_read_by_the_bridge_only() -> None:
    from components.vllm_adapter.vllm_errors import from_error_info

    context = from_error_info(400, "This model's maximum context length is 4096", None)
    assert isinstance(context, errors.ContextLengthExceeded)
    assert from_error_info(404, "The model `x` does not exist.", None).code == "model_not_found"
    assert errors.from_status(400, "This model's maximum context length is 4096").code is None


def test_from_status_maps_statuses() -> None:
    assert errors.from_status(422, "bad").status == 422
    assert errors.from_status(400, "bad").type == "invalid_request_error"
    server = errors.from_status(500, "boom")
    assert server.status == 500 and server.type == "server_error"


def test_a_status_and_text_never_make_an_engine_fault() -> None:
    """Only a type can be an engine fault (issue #24): whatever vLLM reports as a status and
    text, the client may have written that text."""
    for status in range(100, 600):
        for text in ("out of memory", "EngineCore encountered an issue.", "engine dead", "EngineDeadError"):
            error = errors.from_status(status, text)
            assert not error.engine_fault
            assert not isinstance(error, errors.EngineDead | errors.EngineOutOfMemory)


def test_vllms_fault_words_do_not_name_a_fault() -> None:
    from components.vllm_adapter.vllm_errors import from_error_info

    for status in (500, 503):
        for text in ("CUDA out of memory. Tried to allocate 2.00 GiB", "EngineCore encountered an issue."):
            error = from_error_info(status, text, None)
            assert not error.engine_fault and error.status == status
            assert text not in error.message  # internals stay in the log
