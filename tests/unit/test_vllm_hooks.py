"""components/vllm_adapter/vllm_hooks.py, grammar_reuse.py and call_scope.py: what each hook does
with the `EngineCall` current while vLLM runs it (pure logic on stand-ins shaped like vLLM 0.32's
objects, except the grammar validation, which is vLLM's own function)."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from components.core.priority import CLASS_ARG
from components.vllm_adapter import call_scope
from components.vllm_adapter.delivery import Delivery
from components.vllm_adapter.engine_call import EngineCall
from components.vllm_adapter.grammar_reuse import grammar_key, install_grammar_reuse
from components.vllm_adapter.internals import RENDERS
from components.vllm_adapter.vllm_hooks import _reject_past_the_context, install_engine_tags, report_rendered


class ErrorResponse:
    pass


class Handler:
    """vLLM 0.32's call shapes: chat/completion renders take the request and return the
    prompts (in a tuple for chat); the Responses handler's render also takes the previous
    response and returns one `engine_input`."""

    model_config = SimpleNamespace(max_model_len=4096)

    @staticmethod
    def _extract_prompt_len(engine_input: Any) -> int:
        return len(engine_input["prompt_token_ids"])

    async def render_chat_request(self, request: Any) -> Any:
        return ("conversation", [{"prompt_token_ids": [1, 2, 3]}])

    async def _render_resolved_response_inputs(self, request: Any, prev_response: Any, *,
                                               skip_mm_cache: bool = False) -> Any:
        return SimpleNamespace(messages=[], engine_input={"prompt_token_ids": [1] * 7})


@contextmanager
def current(call: EngineCall | None) -> Iterator[None]:
    if call is None:
        yield
        return
    with call_scope.engine_call(call):
        yield


def test_the_prompt_lengths_reach_the_reservation_in_every_call_shape() -> None:
    handler = Handler()
    report_rendered(handler, RENDERS["openai_serving_chat"], ErrorResponse)
    report_rendered(handler, RENDERS["openai_serving_responses"], ErrorResponse)
    report_rendered(handler, RENDERS["openai_serving_chat"], ErrorResponse)  # once only
    seen: list[tuple[list[int], int]] = []

    async def reserve(lengths: list[int], max_model_len: int) -> None:
        seen.append((lengths, max_model_len))

    async def scenario() -> None:
        with call_scope.engine_call(EngineCall(reserve=reserve)):
            await handler.render_chat_request("request")
            result = await handler._render_resolved_response_inputs("request", None)
            assert result.engine_input["prompt_token_ids"] == [1] * 7  # passed through untouched
        with call_scope.engine_call(EngineCall()):  # nothing to reserve
            await handler.render_chat_request("request")
        await handler.render_chat_request("request")  # no call (the warm-up)

    asyncio.run(scenario())
    assert seen == [([3], 4096), ([7], 4096)]


def test_past_the_context_is_an_error_unless_the_service_chose_max_tokens() -> None:
    strict = _reject_past_the_context(lambda max_model_len, max_tokens, input_length, *args, **kwargs:
                                      min(max_tokens or max_model_len, max_model_len - input_length))
    with pytest.raises(ValueError, match="maximum context length is 100 tokens"):
        strict(100, 50, 60, {})
    with pytest.raises(ValueError):
        with current(EngineCall(client_chose_max_tokens=True)):
            strict(100, 50, 60, {})
    with current(EngineCall(client_chose_max_tokens=False)):
        assert strict(100, 50, 60, {}) == 40  # clamped, as vLLM does
    assert strict(100, 50, 60, {}, truncate_prompt_tokens=10) == 40
    assert strict(100, 40, 60, {}) == 40


class Engine:
    def __init__(self, outputs: list[Any] | None = None, fail: BaseException | None = None) -> None:
        self.seen: list[Any] = []
        self.prompts: list[Any] = []
        self.outputs = outputs or []
        self.fail = fail
        self.closed = False

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> Any:
        self.seen.append(dict(sampling_params.extra_args) if sampling_params.extra_args else None)
        self.prompts.append(prompt)
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[Any]:
        try:
            for output in self.outputs:
                yield output
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed = True


def params(kind: str = "DELTA", extra: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(extra_args=extra, output_kind=SimpleNamespace(name=kind))


def output(prompt: int, tokens: dict[int, int], finished: bool = False) -> Any:
    """One RequestOutput: `tokens` maps choice index -> token ids in this output."""
    return SimpleNamespace(prompt_token_ids=list(range(prompt)), finished=finished,
                           outputs=[SimpleNamespace(index=i, token_ids=[7] * n) for i, n in tokens.items()])


def run(engine: Any, call: EngineCall | None, prompt: Any, sampling: Any, take: int | None = None) -> list[Any]:
    """Call the wrapped generate with `call` current and read `take` outputs (None: all)."""
    async def scenario() -> list[Any]:
        with current(call):
            stream = engine.generate(prompt, sampling, "r1")
        got = []
        try:
            async for each in stream:
                got.append(each)
                if take is not None and len(got) == take:
                    break
        finally:
            await stream.aclose()
        return got

    return asyncio.run(scenario())


def test_every_engine_request_carries_the_class_it_was_admitted_as() -> None:
    engine = Engine()
    install_engine_tags(engine)
    install_engine_tags(engine)  # once only
    # A client's own vllm_xargs arrive in extra_args: they stay, except a class of its own.
    run(engine, EngineCall(priority_class=10), {}, params(extra={CLASS_ARG: 0, "mine": 1}))
    run(engine, EngineCall(priority_class=10), {}, params())
    run(engine, None, {}, params(extra={CLASS_ARG: 0}))  # no class set (warm-up): none goes
    assert engine.seen == [{CLASS_ARG: 10, "mine": 1}, {CLASS_ARG: 10}, None]


def test_the_cache_salt_is_the_services_never_the_clients() -> None:
    engine = Engine()
    install_engine_tags(engine)
    mine = {"prompt_token_ids": [1, 2], "cache_salt": "client-chosen"}
    run(engine, EngineCall(cache_salt="tenant:a"), mine, params())
    run(engine, None, mine, params())  # keys off: one partition, whatever the client says
    assert engine.prompts == [{"prompt_token_ids": [1, 2], "cache_salt": "tenant:a"}, {"prompt_token_ids": [1, 2]}]
    assert mine["cache_salt"] == "client-chosen"  # vLLM's own object is not changed


def test_streamed_choices_are_counted_token_by_token() -> None:
    outputs = [output(5, {0: 1, 1: 1}), output(5, {0: 2}), output(5, {1: 3}, finished=True)]
    delivery = Delivery()
    engine = Engine(outputs)
    install_engine_tags(engine)
    assert len(run(engine, EngineCall(delivery=delivery), {"prompt_token_ids": [1] * 5}, params())) == 3
    assert (delivery.total, delivery.unknown) == (5 + 3 + 4, False)


def test_a_stream_cut_off_is_charged_its_prompt_and_what_came_out() -> None:
    outputs = [output(5, {0: 1, 1: 1}), output(5, {0: 1, 1: 1}), output(5, {0: 1, 1: 1}, finished=True)]
    delivery = Delivery()
    engine = Engine(outputs)
    install_engine_tags(engine)
    run(engine, EngineCall(delivery=delivery), {"prompt_token_ids": [1] * 5}, params(), take=2)
    assert engine.closed  # closing the wrapper closes vLLM's generator: the engine aborts
    assert (delivery.total, delivery.unknown) == (5 + 4, False)
    before_any = Delivery()
    run(Engine(outputs), EngineCall(delivery=before_any), {"prompt_token_ids": [1] * 5}, params(), take=0)
    assert before_any.total == 0  # take=0 never starts it


def test_a_final_only_request_cut_off_is_unknown_and_a_finished_one_exact() -> None:
    finished = Delivery()
    engine = Engine([output(4, {0: 6, 1: 9}, finished=True)])
    install_engine_tags(engine)
    run(engine, EngineCall(delivery=finished), {"prompt_token_ids": [1] * 4}, params("FINAL_ONLY"))
    assert (finished.total, finished.unknown) == (4 + 15, False)

    async def cut() -> Delivery:
        delivery = Delivery()
        never = asyncio.Event()

        async def outputs() -> AsyncIterator[Any]:
            await never.wait()
            yield output(4, {0: 1})

        task = asyncio.ensure_future(_drain(delivery.count(outputs(), "r1", 4, delta=False)))
        await asyncio.sleep(0)
        task.cancel()  # a disconnect or time limit while the engine works
        await asyncio.gather(task, return_exceptions=True)
        return delivery

    delivery = asyncio.run(cut())
    assert (delivery.total, delivery.unknown) == (4, True)


def test_an_engine_error_charges_only_what_came_out() -> None:
    delivery = Delivery()
    engine = Engine([output(5, {0: 2})], fail=RuntimeError("engine failed"))
    install_engine_tags(engine)
    with pytest.raises(RuntimeError):
        run(engine, EngineCall(delivery=delivery), {"prompt_token_ids": [1] * 5}, params())
    assert (delivery.total, delivery.unknown) == (5 + 2, False)
    refused = Delivery()
    engine = Engine(fail=ValueError("bad request"))
    install_engine_tags(engine)
    with pytest.raises(ValueError):
        run(engine, EngineCall(delivery=refused), {"prompt_token_ids": [1] * 5}, params("FINAL_ONLY"))
    assert (refused.total, refused.unknown) == (0, False)


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


# vLLM's own grammar validation, with the guard's builds skipped (install_grammar_reuse).
# A schema xgrammar refuses at once shows, without timing anything, whether a build ran.
REFUSED = {"type": "strin"}


@pytest.fixture(scope="module")
def validate() -> Any:
    """vLLM 0.32's installed `validate_xgrammar_grammar`, wrapped in a stand-in module (the
    real module is left as it is) and a function that validates one constraint with it."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output import backend_xgrammar

    module = SimpleNamespace(validate_xgrammar_grammar=backend_xgrammar.validate_xgrammar_grammar)
    install_grammar_reuse(module)
    install_grammar_reuse(module)  # once only
    assert module.validate_xgrammar_grammar.__wrapped__ is backend_xgrammar.validate_xgrammar_grammar

    def run(built: set[str | None], **constraint: Any) -> StructuredOutputsParams:
        params = SamplingParams(structured_outputs=StructuredOutputsParams(**constraint))
        with call_scope.engine_call(EngineCall(grammars=frozenset(key for key in built if key is not None))):
            module.validate_xgrammar_grammar(params)
        assert params.structured_outputs is not None
        return params.structured_outputs

    return run


def test_vllms_validation_calls_only_the_builders_the_hook_knows() -> None:
    """Canary against the installed vLLM: a builder it starts calling is vLLM's own build
    (never skipped), so the guard would not cover it: this names it."""
    from vllm.v1.structured_output import backend_xgrammar

    names = set(backend_xgrammar.validate_xgrammar_grammar.__code__.co_names)
    assert "xgr" in names
    assert {name for name in names if name.startswith("from_")} == {
        "from_json_schema", "from_regex", "from_ebnf", "from_lark", "from_structural_tag"}


@pytest.mark.parametrize("as_text", [False, True])
def test_a_build_the_guard_made_for_this_request_is_not_made_again(validate: Any, as_text: bool) -> None:
    from vllm.exceptions import VLLMValidationError

    schema = json.dumps(REFUSED) if as_text else REFUSED
    with pytest.raises(VLLMValidationError):
        validate(set(), json=schema)  # vLLM's own build
    validate({grammar_key("json", json.dumps(REFUSED))}, json=schema)  # skipped: no error
    with pytest.raises(VLLMValidationError):  # another build's key skips nothing
        validate({grammar_key("regex", json.dumps(REFUSED))}, json=schema)
    with pytest.raises(VLLMValidationError):
        validate({grammar_key("lark", "root ::= (")}, grammar="root ::= (")
    validate({grammar_key("ebnf", "root ::= (")}, grammar="root ::= (")
    with pytest.raises(VLLMValidationError):
        validate(set(), regex="((")
    validate({grammar_key("regex", "((")}, regex="((")


def test_vllms_other_checks_still_run_on_a_skipped_build(validate: Any) -> None:
    from vllm.exceptions import VLLMValidationError

    unsupported = {"type": "integer", "multipleOf": 3}  # xgrammar would ignore the keyword
    with pytest.raises(VLLMValidationError, match="not supported"):
        validate({grammar_key("json", json.dumps(unsupported))}, json=unsupported)
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "array", "items": deep}
    with pytest.raises(VLLMValidationError):
        validate({grammar_key("json", json.dumps(deep))}, json=deep)
    with pytest.raises(ValueError, match="NUL"):
        validate({grammar_key("regex", "a\x00")}, regex="a\x00")
    # `choice` is still rewritten into the grammar the engine compiles.
    rewritten = validate(set(), choice=["yes", "no"])
    assert rewritten.choice is None and rewritten.grammar


def test_the_grammars_are_the_requests_own() -> None:
    """Set for FastAPI's validation of one request's body: seen there (and in the threads it
    starts), never in another request's context; an engine call's own grammars only inside it."""
    async def scenario() -> None:
        call_scope.expect_built_grammars(frozenset({"a"}))
        assert await asyncio.create_task(asyncio.to_thread(call_scope.built_grammars)) == frozenset({"a"})

        async def other() -> frozenset[str]:
            return call_scope.built_grammars()

        loop = asyncio.get_running_loop()
        assert await loop.create_task(other(), context=contextvars.Context()) == frozenset()
        with call_scope.engine_call(EngineCall(grammars=frozenset({"b"}))):
            assert call_scope.built_grammars() == frozenset({"b"})
        assert call_scope.built_grammars() == frozenset({"a"})

    asyncio.run(scenario())


def test_a_stream_is_read_with_its_call_current_at_every_step_and_only_then() -> None:
    """vLLM reaches the engine while its stream is read (a streamed Responses request
    renders then): each step sees the call; the reader, between steps, never does."""
    call = EngineCall(cache_salt="tenant:a")
    seen: list[EngineCall | None] = []
    closed: list[bool] = []

    async def source() -> AsyncIterator[int]:
        try:
            for number in range(3):
                seen.append(call_scope.current())
                yield number
        finally:
            closed.append(True)

    async def scenario() -> list[EngineCall | None]:
        between = []
        stream = call_scope.Scoped(source(), call)
        async for _ in stream:
            between.append(call_scope.current())
            if len(between) == 2:
                break
        await stream.aclose()
        return between

    assert asyncio.run(scenario()) == [None, None]
    assert seen == [call, call] and closed == [True]  # closing it closed vLLM's generator


def test_closing_an_unread_stream_closes_vllms() -> None:
    class Source:
        closed = False

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> int:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            self.closed = True

    source = Source()
    asyncio.run(call_scope.Scoped(source, EngineCall()).aclose())
    assert source.closed
