"""The range table (components/core/request_fields.py `RANGES`) against vLLM's own request models
and sampling parameters: every numeric field of every route's model has a range (a vLLM
upgrade that adds one fails here), no range admits what vLLM's models or SamplingParams
refuse, and `out_of_range` finds every refused value wherever the model nests it."""

from __future__ import annotations

import json
import math
import typing
from typing import Any

import annotated_types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from vllm.exceptions import VLLMValidationError

from components.core.errors import InvalidRequest
from components.core.request_fields import INT64_MAX, INT64_MIN, RANGES, Range, numeric_paths, out_of_range
from components.serving.validation import check_ranges
from components.vllm_adapter.vllm_bridge import api_models, request_models

ChatRequest, CompletionRequest, _ = request_models()
MessagesRequest, CountTokensRequest, ResponsesRequest, TokenizeRequest, DetokenizeRequest = api_models()
MODELS: list[type[BaseModel]] = [ChatRequest, CompletionRequest, ResponsesRequest, MessagesRequest, CountTokensRequest,
                                 *typing.get_args(TokenizeRequest), DetokenizeRequest]
BASES: dict[type[BaseModel], dict[str, Any]] = {
    ChatRequest: {"messages": [{"role": "user", "content": "hi"}]},
    CompletionRequest: {"prompt": "hi"},
    ResponsesRequest: {"input": "hi"},
    MessagesRequest: {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**62},
    CountTokensRequest: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}
BAD = [-7, -1, -0.5, 0, 0.0, 2**63, 2**64, 1e300, math.inf, -math.inf, math.nan, 1.5]


def test_every_numeric_field_of_every_route_has_a_range() -> None:
    missing = {f"{model.__name__}.{path}" for model in MODELS for path in numeric_paths(model) if path not in RANGES}
    assert not missing, f"numeric fields without a range in request_fields.RANGES: {sorted(missing)}"


def test_every_range_belongs_to_a_field() -> None:
    used = {path for model in MODELS for path in numeric_paths(model)}
    assert set(RANGES) <= used, sorted(set(RANGES) - used)


def test_the_walk_sees_the_fields_the_issue_names() -> None:
    paths = {path for model in MODELS for path in numeric_paths(model)}
    assert {"n", "max_tokens", "max_completion_tokens", "max_output_tokens", "top_logprobs", "logprobs",
            "prompt_logprobs", "truncate_prompt_tokens", "temperature", "top_p", "top_k", "min_p",
            "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "min_tokens", "length_penalty",
            "logit_bias{}", "thinking.budget_tokens"} <= paths
    assert numeric_paths(CountTokensRequest) == ("thinking.budget_tokens",)
    assert all(numeric_paths(model) == () for model in typing.get_args(TokenizeRequest))  # /tokenize: none


def _declared_bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The bounds vLLM's pydantic model declares on a top-level field (Ge/Gt/Le/Lt, nested
    in Optional[Annotated[...]] too)."""
    low, high = -math.inf, math.inf
    pending: list[Any] = [model.model_fields[name]]
    while pending:
        item = pending.pop()
        for meta in getattr(item, "metadata", ()):
            pending.append(meta)
            if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
                low = max(low, float(getattr(meta, "ge", getattr(meta, "gt", -math.inf))))
            if isinstance(meta, annotated_types.Le | annotated_types.Lt):
                high = min(high, float(getattr(meta, "le", getattr(meta, "lt", math.inf))))
        pending.extend(typing.get_args(getattr(item, "annotation", item)))
    return low, high


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_no_range_is_wider_than_the_model_declares(model: type[BaseModel]) -> None:
    for path in numeric_paths(model):
        if not path.isidentifier():
            continue
        low, high = _declared_bounds(model, path)
        rule = RANGES[path]
        assert rule.low >= low or all(v >= low for v in rule.also), (path, rule, low)
        assert rule.high <= high, (path, rule, high)


def _sampling_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    return {"max_tokens": 16, **values}


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    name: st.one_of(st.floats(rule.low, rule.high, exclude_min=rule.above, allow_nan=False, allow_infinity=False),
                    st.sampled_from([rule.low, rule.high]).filter(lambda v, r=rule: r.admits(v)))
    if not rule.integer else st.integers(int(max(rule.low, -(2**40))), int(min(rule.high, 2**40)))
    for name, rule in RANGES.items()
    if name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                "repetition_penalty", "min_tokens")
}))
def test_what_the_table_admits_vllm_samples_with(values: dict[str, Any]) -> None:
    """Nothing the table admits is refused by vLLM's SamplingParams (which would be a late
    error, after admission)."""
    from vllm import SamplingParams

    values.pop("min_tokens", None) if values.get("min_tokens", 0) > 16 else None
    SamplingParams.from_optional(**_sampling_kwargs(values))


@pytest.mark.parametrize("name,value", [
    ("temperature", -0.01), ("temperature", 2.01), ("top_p", 0.0), ("top_p", 1.01), ("top_k", -2), ("min_p", 1.01),
    ("presence_penalty", 2.5), ("frequency_penalty", -2.5), ("repetition_penalty", 0.0), ("min_tokens", -1),
    ("n", 0), ("max_tokens", 0), ("logprobs", -2), ("prompt_logprobs", -2), ("temperature", math.nan),
    ("repetition_penalty", math.inf),
])
def test_what_vllm_refuses_the_table_refuses(name: str, value: float) -> None:
    from vllm import SamplingParams

    with pytest.raises((ValueError, VLLMValidationError)):
        SamplingParams.from_optional(**_sampling_kwargs({name: value}))
    assert not RANGES[name].admits(value)


def _place(base: dict[str, Any], path: str, value: Any) -> dict[str, Any] | None:
    body = json.loads(json.dumps(base))
    if path == "thinking.budget_tokens":
        body["thinking"] = {"type": "enabled", "budget_tokens": value}
        return body
    if "." in path:
        return None  # the hosted tools' options: see test_nested_tool_options_are_checked
    name = path.split("[")[0].split("{")[0]
    for marker in reversed(path[len(name):].replace("][", "] [").replace("}[", "} [").split()):
        value = [value] if marker == "[]" else {"50": value}
    body[name] = value
    return body


CASES = [(model, path) for model in BASES for path in numeric_paths(model)]


@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.sampled_from(CASES), st.one_of(st.sampled_from(BAD), st.integers(), st.floats()))
def test_a_value_out_of_range_is_refused_naming_its_field(case: tuple[type[BaseModel], str], value: Any) -> None:
    """Wherever the model nests a field, a value outside its range is refused, by vLLM's
    model (a 400 at the route) or by `out_of_range`, naming the field."""
    model, path = case
    body = _place(BASES[model], path, value)
    if RANGES[path].integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # pydantic takes 3.0 for 3
    if body is None or RANGES[path].admits(value):
        return
    try:
        parsed = model.model_validate(body)
    except (ValidationError, ValueError, VLLMValidationError):
        return
    found = out_of_range(parsed)
    assert found is not None, (model.__name__, path, value)
    param, message = found
    top = path.split("[")[0].split("{")[0].split(".")[0]
    assert param.split(".")[0] == top and param in message


def test_the_defaults_are_in_range() -> None:
    for model, base in BASES.items():
        assert out_of_range(model.model_validate(base)) is None, model.__name__


def test_nested_tool_options_are_checked() -> None:
    body = ResponsesRequest.model_validate({"input": "hi", "tools": [
        {"type": "file_search", "vector_store_ids": ["v"], "max_num_results": -3}]})
    assert out_of_range(body) == ("tools.0.max_num_results",
                                  "tools.0.max_num_results must be an integer in [0, 2**63-1].")


def test_logit_bias_keys_are_token_ids() -> None:
    for key in ("out of memory", "-1", str(2**64), "1e3", "٣"):
        body = ChatRequest.model_validate({**BASES[ChatRequest], "logit_bias": {key: 1}})
        assert out_of_range(body) is not None and out_of_range(body)[0] == "logit_bias", key  # type: ignore[index]


def test_messages_never_echo_the_value() -> None:
    body = ChatRequest.model_validate({**BASES[ChatRequest], "temperature": 123456.789})
    assert out_of_range(body) == ("temperature", "temperature must be a finite number in [0, 2].")


def test_range_admits() -> None:
    rule = Range(0, 2)
    assert [rule.admits(v) for v in (0, 2, 1.5, -0.0)] == [True, True, True, True]
    assert not any(rule.admits(v) for v in (math.nan, math.inf, -math.inf, -1e-9, 2.0000001, 10**400))
    assert Range(1, INT64_MAX, integer=True, also=(-1,)).admits(-1)
    assert not Range(INT64_MIN, INT64_MAX, integer=True).admits(2**63)
    assert not Range(0, 10, integer=True).admits(1.0)


@pytest.mark.parametrize("best_of,n,refused", [(None, 1, False), (1, None, False), (2, 2, False), (3, 1, True),
                                               (0, 1, True), (-1, 1, True), ("1", 1, True), (True, 1, True)])
def test_best_of(best_of: Any, n: int | None, refused: bool) -> None:
    data: dict[str, Any] = {"prompt": "hi", "best_of": best_of}
    if n is not None:
        data["n"] = n
    body = CompletionRequest.model_validate(data)
    if refused:
        with pytest.raises(InvalidRequest) as caught:
            check_ranges(body)
        assert caught.value.param == "best_of"
    else:
        check_ranges(body)
