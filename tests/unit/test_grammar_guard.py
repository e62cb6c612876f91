"""components/serving/grammar_guard.py: every grammar field of every route is found, a build or
compile past the limit is stopped (its worker process killed) and refused with the field
named, a grammar that cannot compile is a 400 naming it, and what was built in time is
returned, for the request's own validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.errors import InvalidRequest, Overloaded
from components.serving.grammar_guard import GrammarGuard, Spec, grammar_specs
from components.vllm_adapter.grammar_reuse import grammar_key

# The integration test's pattern: tens of seconds for xgrammar (tests/integration/test_invariant_grammar.py).
PATHOLOGICAL = json.dumps({"type": "string", "pattern": ".{8000}"})

# Where each route carries a JSON schema, and the field an error names.
PLACES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("response_format",
     lambda s: {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}}),
    ("structured_outputs", lambda s: {"structured_outputs": {"json": s}}),
    ("structured_outputs", lambda s: {"structured_outputs": {"json": json.dumps(s)}}),
    ("text.format", lambda s: {"text": {"format": {"type": "json_schema", "name": "x", "schema": s}}}),
    ("output_config", lambda s: {"output_config": {"format": {"type": "json_schema", "schema": s}}}),
    ("tools", lambda s: {"tools": [{"type": "function", "function": {"name": "f", "parameters": s}}]}),
    ("tools", lambda s: {"tools": [{"type": "function", "name": "f", "parameters": s}]}),
    ("tools", lambda s: {"tools": [{"name": "f", "input_schema": s}]}),
    ("response_format", lambda s: {"response_format": {"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<f>"], "tags": [
            {"begin": "<f>", "content": {"type": "json_schema", "json_schema": s}, "end": "</f>"}]}}}),
    ("response_format", lambda s: {"response_format": {"type": "structural_tag", "triggers": ["<f>"],
                                                       "structures": [{"begin": "<f>", "schema": s, "end": "</f>"}]}}),
    ("structured_outputs", lambda s: {"structured_outputs": {"structural_tag": json.dumps(
        {"type": "structural_tag", "format": {"type": "json_schema", "json_schema": s}})}}),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model folder with a small byte-level BPE tokenizer and a config, as the engine's
    tokenizer would be found (the workers compile against it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tokenizer")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8, vocab_size=300,
                            special_tokens=["<eos>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 320}))
    return str(Path(folder))


schemas = st.fixed_dictionaries({"type": st.just("string"), "pattern": st.text(min_size=1, max_size=30)})


@settings(derandomize=True, max_examples=60, deadline=None)
@given(place=st.sampled_from(PLACES), schema=schemas)
def test_every_schema_field_of_every_route_is_found(place: tuple[str, Callable[..., dict[str, Any]]],
                                                    schema: dict[str, Any]) -> None:
    param, build = place
    specs = grammar_specs({"model": "m", "messages": [], **build(schema)})
    assert [(spec.param, spec.kind, json.loads(spec.source)) for spec in specs] == [(param, "json", schema)]


@pytest.mark.parametrize("kind", ["regex", "grammar"])
def test_regexes_and_grammars_are_found(kind: str) -> None:
    assert grammar_specs({"structured_outputs": {kind: "a+"}}) == [Spec("structured_outputs", kind, "a+")]
    tag = {"type": "structural_tag", "format": {"type": kind, "pattern" if kind == "regex" else kind: "a+"}}
    assert grammar_specs({"response_format": tag}) == [Spec("response_format", kind, "a+")]


@pytest.mark.parametrize("body", [None, [], "x", {"messages": []}, {"response_format": {"type": "json_object"}},
                                  {"response_format": "json"}, {"tools": ["f"]},
                                  {"structured_outputs": {"choice": ["a"]}},
                                  {"structured_outputs": {"structural_tag": "{not json"}}])
def test_bodies_without_a_grammar_to_build_cost_nothing(body: Any) -> None:
    assert grammar_specs(body) == []


def test_a_build_past_the_limit_is_killed_and_refused_naming_its_field(tokenizer: str) -> None:
    async def scenario() -> None:
        guard = GrammarGuard(timeout_s=1.0, tokenizer=tokenizer, workers=1)
        await guard.check([Spec("tools", "json", "{}")])  # starts the worker, outside any deadline
        (worker,) = guard._idle
        with pytest.raises(InvalidRequest) as refused:
            await guard.check([Spec("tools", "json", "{}"), Spec("response_format", "json", PATHOLOGICAL)])
        assert (refused.value.status, refused.value.code, refused.value.param) == (400, "grammar_too_complex",
                                                                                   "response_format")
        assert worker.process.returncode is not None  # killed, not left building
        # A broken schema is vLLM's to refuse; a good one passes, on a fresh worker.
        await guard.check([Spec("structured_outputs", "json", "{not json"), Spec("tools", "regex", "[a-z]+")])
        assert guard._idle and guard._idle[0] is not worker
        await guard.close()

    asyncio.run(scenario())


def test_no_free_worker_within_the_limit_is_a_503() -> None:
    async def scenario() -> None:
        guard = GrammarGuard(timeout_s=0.5, tokenizer="unused", workers=1)
        await guard._slots.acquire()  # the one worker is busy with another request's build
        with pytest.raises(Overloaded) as busy:
            await guard.check([Spec("tools", "json", "{}")])
        assert busy.value.status == 503 and busy.value.headers["retry-after"] == "1"
        await guard.check([])  # nothing to build: no wait at all

    asyncio.run(scenario())


def test_what_was_built_in_time_is_returned_and_only_that(tokenizer: str) -> None:
    """vLLM's validation skips exactly the builds returned here (components/vllm_adapter/grammar_reuse.py),
    handed on with the request's engine call: the ones this request's worker completed,
    keyed by builder and source. A return value, never a record shared between requests:
    whatever a key sends, no other request sees its builds."""
    async def scenario() -> None:
        guard = GrammarGuard(timeout_s=60.0, tokenizer=tokenizer, workers=1)
        schema = '{"type": "string", "maxLength": 3}'
        built = await guard.check([Spec("tools", "json", schema), Spec("structured_outputs", "json", "{not json"),
                                   Spec("structured_outputs", "json", '{"type": "strin"}'),
                                   Spec("structured_outputs", "regex", "[a-z]+"),
                                   Spec("structured_outputs", "grammar", 'root ::= "a"')])
        assert built == {grammar_key("json", json.loads(schema)), grammar_key("regex", "[a-z]+"),
                         grammar_key("ebnf", 'root ::= "a"')}
        for count in range(1, 30):  # request after request: each gets its own builds only
            assert await guard.check([Spec("tools", "regex", f"a{{{count}}}")]) == {
                grammar_key("regex", f"a{{{count}}}")}
        assert await guard.check([]) == frozenset()
        # A build past the limit refuses the request: nothing is handed on, not even the builds before it.
        short = GrammarGuard(timeout_s=1.0, tokenizer=tokenizer, workers=1)
        await short.check([Spec("tools", "regex", "c+")])  # starts the worker, outside any deadline
        with pytest.raises(InvalidRequest):
            await short.check([Spec("tools", "regex", "d+"), Spec("response_format", "json", PATHOLOGICAL)])
        await guard.close()
        await short.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("pattern", ["a{1500}", ".{300}"])
def test_a_grammar_that_builds_but_cannot_compile_is_a_400_naming_its_field(tokenizer: str, pattern: str) -> None:
    """xgrammar builds these, and with vLLM's compiler options (its cache on) fails to compile
    them: the engine would fail the request (a 500). The worker compiles as the engine does,
    so the request is refused first, naming the field, and records nothing."""
    async def scenario() -> None:
        guard = GrammarGuard(timeout_s=60.0, tokenizer=tokenizer, workers=1)
        source = json.dumps({"type": "string", "pattern": pattern})
        with pytest.raises(InvalidRequest) as refused:
            await guard.check([Spec("tools", "json", "{}"), Spec("structured_outputs", "json", source),
                               Spec("tools", "regex", "[a-z]+")])
        assert (refused.value.status, refused.value.type, refused.value.code, refused.value.param) == (
            400, "invalid_request_error", "invalid_grammar", "structured_outputs")
        assert "grammar_functor" not in refused.value.message  # xgrammar's internals stay in the worker
        # Not a fault of the worker: it stays, and the next request's grammar compiles on it.
        (worker,) = guard._idle
        built = await guard.check([Spec("tools", "json", '{"type": "string", "pattern": "^[a-z]{1,8}$"}')])
        assert guard._idle == [worker] and len(built) == 1
        await guard.close()

    asyncio.run(scenario())
