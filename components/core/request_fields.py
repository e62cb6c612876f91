"""Reading a request's fields by what its model declares (vLLM's pydantic request models),
and the range every numeric field must lie in.

vLLM's models keep unknown JSON keys as attributes, so `getattr`/`hasattr` would let a
client's extra `messages`, `input` or `max_output_tokens` decide how a request is counted,
capped or aborted. Everything that decides reads declared fields only.

`RANGES` is the one table of numeric fields, for every route's model: where vLLM 0.32
bounds a field (its pydantic models, `SamplingParams._verify_args`) the table holds its
bound, so that nothing vLLM would refuse late (as a 500, or once the request holds an engine
slot) gets that far; where vLLM has none, the bound a demanding user expects, and `why`
says whose it is. `numeric_paths` finds the numeric fields in the models themselves:
tests/unit/test_field_ranges.py fails when a vLLM upgrade adds one the table lacks.
"""

from __future__ import annotations

import collections.abc
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel


def declared(body: Any, name: str) -> Any:
    """A field of the request's model; None when the model does not declare it."""
    return getattr(body, name, None) if name in type(body).model_fields else None


def request_kind(body: Any) -> str:
    """"chat", "responses" or "completion", by the fields its model declares."""
    fields = type(body).model_fields
    return "chat" if "messages" in fields else "responses" if "input" in fields else "completion"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# What the engine's MessagePack transport carries: an int beyond it fails inside vLLM (a 500).
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    integer: bool = False
    above: bool = False  # `low` itself is refused
    also: tuple[int, ...] = ()  # allowed outside [low, high] (vLLM's -1: "all" or "off")
    why: str = "vLLM"  # whose bound this is

    def admits(self, value: float) -> bool:
        if self.integer and not isinstance(value, int):
            return False
        if value in self.also:
            return True
        # NaN fails every comparison; an infinity is never a parameter (an int never is one,
        # and math.isfinite cannot take one beyond a float's range).
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and value <= self.high

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        low = "(" if self.above else "["
        bounds = f"{low}{_show(self.low)}, {_show(self.high)}]"
        extra = "".join(f" or {value}" for value in self.also)
        return f"{kind} in {bounds}{extra}"


def _show(bound: float) -> str:
    if bound == INT64_MAX:
        return "2**63-1"
    if bound == INT64_MIN:
        return "-2**63"
    if bound == _UINT64_MAX:
        return "2**64-1"
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    return str(int(bound)) if bound == int(bound) else str(bound)


_COUNT = Range(1, INT64_MAX, integer=True)  # vLLM: at least 1; the engine's 64-bit ints
_TOKEN_ID = Range(0, INT64_MAX, integer=True, why="a token id: vLLM checks the vocabulary later, not the width")
_LOGPROBS = Range(0, INT64_MAX, integer=True, also=(-1,), why="vLLM (its max_logprobs is checked after)")
_PENALTY = Range(-2.0, 2.0)
_FINITE = Range(-math.inf, math.inf, why="vLLM has none: any finite number")
_ANY_INT = Range(INT64_MIN, INT64_MAX, integer=True, why="vLLM has none: the engine's 64-bit ints")
_XARGS = Range(INT64_MIN, _UINT64_MAX)  # vLLM's _verify_extra_args (ints), finite floats
_HOSTED_TOOL_INT = Range(0, INT64_MAX, integer=True, why="a hosted tool's option: vLLM runs none here")
_HOSTED_TOOL_FLOAT = Range(-math.inf, math.inf, why="a hosted tool's option: vLLM runs none here")

# Path syntax: `a.b` a nested model's field, `a[]` every item of a list, `a{}` every value
# of a mapping. One entry serves every route whose model declares the path.
RANGES: dict[str, Range] = {
    "n": _COUNT,  # and MAX_N (components/serving/validation.py)
    "max_tokens": _COUNT,  # and MAX_TOKENS_LIMIT; over the context: vLLM's context_length_exceeded
    "max_completion_tokens": _COUNT,
    "max_output_tokens": _COUNT,
    "min_tokens": Range(0, INT64_MAX, integer=True),  # vLLM: and at most max_tokens
    "max_tool_calls": Range(0, INT64_MAX, integer=True, why="OpenAI: a count"),
    "temperature": Range(0.0, 2.0),
    "top_p": Range(0.0, 1.0, above=True),
    "top_k": Range(-1, INT64_MAX, integer=True),  # vLLM: -1 and 0 both turn it off
    "min_p": Range(0.0, 1.0),
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
    "repetition_penalty": Range(0.0, math.inf, above=True),
    "length_penalty": _FINITE,  # beam search only, which this service refuses
    "logit_bias{}": Range(-100.0, 100.0, why="OpenAI: vLLM adds any value to the logits"),
    "seed": _ANY_INT,
    "priority": _ANY_INT,  # and never above the key's class (components/serving/validation.py)
    "top_logprobs": _LOGPROBS,
    "logprobs": _LOGPROBS,  # completions' count (chat's is a bool)
    "prompt_logprobs": _LOGPROBS,
    # vLLM: -1 is the model's whole context; 0 would truncate the prompt to nothing.
    "truncate_prompt_tokens": Range(1, INT64_MAX, integer=True, also=(-1,), why="vLLM; 0 refused here"),
    "thinking_token_budget": Range(0, INT64_MAX, integer=True, also=(-1,)),
    "thinking.budget_tokens": Range(1024, INT64_MAX, integer=True),  # Anthropic's, as vLLM declares it
    "stream_interval": _COUNT,
    "routed_experts_prompt_start": Range(0, INT64_MAX, integer=True),
    "stop_token_ids[]": _TOKEN_ID,
    "allowed_token_ids[]": _TOKEN_ID,
    "logprob_token_ids[]": _TOKEN_ID,
    "prompt[]": _TOKEN_ID,
    "prompt[][]": _TOKEN_ID,
    "tokens[]": _TOKEN_ID,  # /detokenize: vLLM's model bounds it the same way
    "vllm_xargs{}": _XARGS,
    "vllm_xargs{}[]": _XARGS,
    # The Responses API's hosted tools (file search, computer use, image generation): vLLM
    # runs none of them here, so only the numbers' sanity is checked.
    "tools[].max_num_results": _HOSTED_TOOL_INT,
    "tools[].display_height": _HOSTED_TOOL_INT,
    "tools[].display_width": _HOSTED_TOOL_INT,
    "tools[].frame_count": _HOSTED_TOOL_INT,
    "tools[].frame_duration_ms": _HOSTED_TOOL_INT,
    "tools[].output_compression": _HOSTED_TOOL_INT,
    "tools[].partial_images": _HOSTED_TOOL_INT,
    "tools[].filters.value": _HOSTED_TOOL_FLOAT,
    "tools[].filters.value[]": _HOSTED_TOOL_FLOAT,
    "tools[].filters.filters[].value": _HOSTED_TOOL_FLOAT,
    "tools[].filters.filters[].value[]": _HOSTED_TOOL_FLOAT,
    "tools[].ranking_options.score_threshold": Range(0.0, 1.0, why="OpenAI"),
    "tools[].ranking_options.hybrid_search.embedding_weight": _HOSTED_TOOL_FLOAT,
    "tools[].ranking_options.hybrid_search.text_weight": _HOSTED_TOOL_FLOAT,
}
# Conversation content, not parameters: numbers inside it are the client's text.
_CONTENT = frozenset({"input", "messages", "system"})
# A mapping whose keys are token ids (vLLM parses them with int()).
_TOKEN_ID_KEYS = frozenset({"logit_bias"})


@cache
def numeric_paths(model: type[BaseModel]) -> tuple[str, ...]:
    """Every numeric field of `model`, nested models, lists and mappings included."""
    found: list[str] = []
    for name, field in model.model_fields.items():
        if name not in _CONTENT:
            _walk(field.annotation, name, found, depth=0)
    return tuple(dict.fromkeys(found))


def _walk(annotation: Any, path: str, found: list[str], depth: int) -> None:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in (int, float):
        found.append(path)
    elif origin is typing.Annotated:
        _walk(args[0], path, found, depth)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            _walk(arg, path, found, depth)
    elif origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        for arg in args:
            _walk(arg, f"{path}[]", found, depth)
    elif origin is dict and len(args) == 2:
        _walk(args[1], f"{path}{{}}", found, depth)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and depth < 3:
        for name, field in annotation.model_fields.items():
            _walk(field.annotation, f"{path}.{name}", found, depth + 1)


def out_of_range(body: BaseModel) -> tuple[str, str] | None:
    """The first numeric field of `body` outside its range, as (param, message); None if
    every one is in range. The message never repeats the client's value."""
    for path in numeric_paths(type(body)):
        rule = RANGES[path]
        for param, value in _values(body, path):
            # A union with str (vllm_xargs) keeps strings: not numbers to check.
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not rule.admits(value):
                return param, f"{param} must be {rule.describe()}."
    for name in _TOKEN_ID_KEYS:
        for key in declared(body, name) or ():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) <= INT64_MAX):
                return name, f"{name} keys must be token ids: integers in [0, 2**63-1]."
    return None


def _values(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(param, value) for every value at `path` in `node`: list items by index, mapping values
    under the mapping's name (its keys are the client's text)."""
    return _walk_values(node, re.findall(r"\[\]|\{\}|[^.\[{]+", path), "")


def _walk_values(node: Any, steps: list[str], param: str) -> Iterator[tuple[str, Any]]:
    if not steps:
        yield param, node
        return
    step, rest = steps[0], steps[1:]
    if step == "[]":
        if isinstance(node, list | tuple):
            for index, item in enumerate(node):
                yield from _walk_values(item, rest, f"{param}.{index}")
    elif step == "{}":
        if isinstance(node, dict):
            for item in node.values():
                yield from _walk_values(item, rest, param)
    else:
        child = node.get(step) if isinstance(node, dict) else getattr(node, step, None)
        if child is not None:
            yield from _walk_values(child, rest, f"{param}.{step}" if param else step)
