"""A fault is attributed by its type and origin, never by text (issue #24, rule 1).

Only vLLM's EngineDeadError and an out-of-memory raised as a type (MemoryError,
torch.OutOfMemoryError, or one carried by the engine's EngineGenerateError) are engine
faults, the only outcome the circuit breaker counts. vLLM's messages echo the client's
input (a `logit_bias` key, a tool name), so no wording may make one: neither a raised
exception's, nor an ErrorResponse's, nor a stream's error event's.
"""

from __future__ import annotations

import importlib
import json
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.errors import EngineDead, EngineOutOfMemory, ServiceError

# What a client can make vLLM echo, and what the old text match looked for.
PHRASES = ("out of memory", "CUDA out of memory. Tried to allocate 2.00 GiB", "CUDA error: out of memory",
           "EngineDeadError", "EngineCore encountered an issue. See stack trace (above) for the root cause.",
           "engine dead", "MemoryError", "OutOfMemoryError")

# Modules of vLLM 0.32 whose exception classes can reach the request path: the
# VLLMError family, the engine's two, and the serving layer's ValueError subclasses.
VLLM_MODULES = ("vllm.exceptions", "vllm.v1.engine.exceptions", "vllm.connections", "vllm.renderers.chat_utils",
                "vllm.entrypoints.generate.structured_decisions.question_types")


def subclasses(base: type) -> list[type]:
    found: list[type] = []
    for sub in base.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def vllm_classes() -> list[type[Exception]]:
    """Every VLLMError subclass vLLM defines, plus the serving layer's own ValueErrors."""
    for name in VLLM_MODULES:
        importlib.import_module(name)
    from vllm.connections import MediaDownloadSizeExceededError
    from vllm.entrypoints.generate.structured_decisions.question_types import StructuredDecisionError
    from vllm.exceptions import VLLMError
    from vllm.renderers.chat_utils import ChatTemplateResolutionError

    family = [cls for cls in {VLLMError, *subclasses(VLLMError)} if cls.__module__.startswith("vllm.")]
    return sorted([*family, MediaDownloadSizeExceededError, StructuredDecisionError, ChatTemplateResolutionError],
                  key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def builtin_classes() -> list[type[Exception]]:
    """What vLLM's serving code raises besides its own classes (create_error_response's
    fallbacks, and the bugs a request's content can trigger)."""
    import jinja2
    import pydantic

    return [ValueError, TypeError, OverflowError, NotImplementedError, jinja2.TemplateError,
            jinja2.TemplateSyntaxError, jinja2.UndefinedError, KeyError, IndexError, AttributeError, RuntimeError,
            AssertionError, RecursionError, TimeoutError, UnicodeError, ZeroDivisionError, OSError,
            pydantic.ValidationError, Exception]


def make(cls: type[Exception], text: str) -> Exception:
    """An instance of `cls` whose message holds `text` wherever its constructor takes one."""
    import jinja2
    import pydantic
    from vllm.exceptions import GracefulHTTPError

    if cls is pydantic.ValidationError:
        return pydantic.ValidationError.from_exception_data(text, [])
    if cls is jinja2.TemplateSyntaxError:
        return cls(text, 1)
    if cls is GracefulHTTPError:
        return cls(text, HTTPStatus.SERVICE_UNAVAILABLE)
    for args in ((text,), (text, text), (), (1, 2)):
        try:
            return cls(*args)
        except TypeError:
            continue
    raise AssertionError(f"cannot construct {cls}")


def vllm_status(exc: Exception) -> int:
    """The status vLLM's own server gives `exc`."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    return int(create_error_response(exc).error.code)


def is_engine_fault(error: ServiceError) -> bool:
    return error.engine_fault or isinstance(error, (EngineDead, EngineOutOfMemory))


def test_every_vllm_class_is_found() -> None:
    names = {cls.__name__ for cls in vllm_classes()}
    assert {"VLLMValidationError", "VLLMNotFoundError", "LoRAAdapterNotFoundError", "VLLMUnprocessableEntityError",
            "GenerationError", "RetryableRequestError", "GracefulHTTPError", "QueueOverflowError",
            "MaxQueuedTokensError", "EngineGenerateError", "EngineDeadError",
            "HTTPResponseSizeExceededError"} <= names


@pytest.mark.parametrize("text", PHRASES)
def test_each_class_maps_by_its_type_as_vllm_does_whatever_its_text(text: str) -> None:
    """Class by class: the status vLLM's own server gives it, and an engine fault only for
    EngineDeadError, whatever the message says."""
    from vllm.v1.engine.exceptions import EngineDeadError

    from components.vllm_adapter.vllm_errors import to_service_error

    for cls in [*vllm_classes(), *builtin_classes()]:
        exc = make(cls, text)
        error = to_service_error(exc)
        if cls is EngineDeadError:
            assert isinstance(error, EngineDead) and error.engine_fault and error.status == 503, cls
            continue
        assert not is_engine_fault(error), (cls, text, error)
        assert error.status == vllm_status(exc), (cls, error.status, vllm_status(exc))
        if error.status >= 500:
            assert text not in error.message, cls  # internals and echoes stay in the log


def test_the_table_has_one_row_per_class_and_no_row_hides_a_later_one() -> None:
    from components.vllm_adapter.vllm_errors import error_table

    kinds = [kind for kind, _ in error_table()]
    assert len(kinds) == len(set(kinds))
    for i, earlier in enumerate(kinds):
        for later in kinds[i + 1:]:
            assert not issubclass(later, earlier), f"{later} is shadowed by {earlier}"
    assert kinds[-1] is Exception  # every exception has a row
    for cls in vllm_classes():
        assert cls in kinds or any(issubclass(cls, kind) and kind is not Exception for kind in kinds), cls


def test_the_status_of_each_row_matches_vllms_own_server() -> None:
    from components.vllm_adapter.vllm_errors import error_table, to_service_error

    engine_rows = {"EngineDeadError", "EngineGenerateError", "MemoryError", "OutOfMemoryError"}
    for kind, _ in error_table():
        if kind.__name__ in engine_rows:
            continue
        exc = make(kind, "x")
        assert to_service_error(exc).status == vllm_status(exc), kind


def test_out_of_memory_is_a_type_raised_by_the_engine() -> None:
    import torch
    from vllm.v1.engine.exceptions import EngineGenerateError

    from components.vllm_adapter.vllm_errors import is_out_of_memory, to_service_error

    def wrapped(cause: BaseException) -> EngineGenerateError:
        # As AsyncLLM.generate() raises it: `raise EngineGenerateError() from e`.
        error = EngineGenerateError()
        error.__cause__ = cause
        return error

    for oom in (MemoryError(), torch.OutOfMemoryError("CUDA out of memory."), wrapped(torch.OutOfMemoryError("x")),
                wrapped(MemoryError())):
        error = to_service_error(oom)
        assert isinstance(error, EngineOutOfMemory) and error.engine_fault and error.status == 503, oom
        assert is_out_of_memory(oom)
    for text in PHRASES:
        for not_oom in (RuntimeError(text), ValueError(text), wrapped(RuntimeError(text)), wrapped(ValueError(text))):
            assert not is_out_of_memory(not_oom), not_oom
            assert not is_engine_fault(to_service_error(not_oom)), not_oom
    # The engine's wrapper of a request's own failure is not the engine's health.
    assert to_service_error(wrapped(IndexError("list index out of range"))).status == 500
    assert not to_service_error(EngineGenerateError()).engine_fault


def test_engine_death_is_its_type_whatever_its_text() -> None:
    from vllm.exceptions import VLLMServerError
    from vllm.v1.engine.exceptions import EngineDeadError

    from components.vllm_adapter.vllm_errors import to_service_error

    assert isinstance(to_service_error(EngineDeadError()), EngineDead)
    dead_words = str(EngineDeadError())
    assert not is_engine_fault(to_service_error(VLLMServerError(dead_words)))
    assert not is_engine_fault(to_service_error(RuntimeError(dead_words)))


def test_the_logit_bias_echo_of_the_report_is_a_400() -> None:
    """The attack of issue #24: vLLM's own validation error for `logit_bias: {"out of memory": 1}`."""
    from vllm.sampling_params import SamplingParams

    from components.vllm_adapter.vllm_errors import to_service_error

    with pytest.raises(Exception) as raised:
        SamplingParams.from_optional(logit_bias={"out of memory": 1.0})
    error = to_service_error(raised.value)
    assert error.status == 400 and error.param == "logit_bias" and not is_engine_fault(error)


# Text with the phrases mixed into arbitrary text.
texts = st.one_of(st.sampled_from(PHRASES), st.text(max_size=40),
                  st.tuples(st.text(max_size=10), st.sampled_from(PHRASES), st.text(max_size=10)).map("".join))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(index=st.integers(min_value=0), text=texts, cause_text=texts, with_cause=st.booleans())
def test_no_text_in_any_non_engine_exception_makes_an_engine_fault(
    index: int, text: str, cause_text: str, with_cause: bool
) -> None:
    from vllm.v1.engine.exceptions import EngineDeadError

    from components.vllm_adapter.vllm_errors import to_service_error

    classes = [cls for cls in [*vllm_classes(), *builtin_classes()] if cls is not EngineDeadError]
    exc = make(classes[index % len(classes)], text)
    if with_cause:
        exc.__cause__ = RuntimeError(cause_text)
    assert not is_engine_fault(to_service_error(exc))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(status=st.integers(min_value=400, max_value=599), text=texts, param=st.none() | texts)
def test_no_error_response_makes_an_engine_fault(status: int, text: str, param: str | None) -> None:
    """vLLM's ErrorResponse carries only a code and text: never an engine fault."""
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

    from components.vllm_adapter.vllm_errors import from_error_info

    response = ErrorResponse(error=ErrorInfo(message=text, type="InternalServerError", code=status, param=param))
    # As OpenAIBridge.call maps it.
    error = from_error_info(response.error.code, response.error.message, response.error.param)
    assert not is_engine_fault(error)
    assert error.status == status


@settings(derandomize=True, max_examples=300, deadline=None)
@given(code=st.one_of(st.integers(min_value=400, max_value=599), st.none(), texts), text=texts,
       kind=st.sampled_from(["InternalServerError", "ServiceUnavailableError", "BadRequestError", "EngineDeadError"]),
       tail=st.sampled_from(["\n\n", "\n\ndata: [DONE]\n\n", "", "garbage"]))
def test_no_stream_error_event_makes_an_engine_fault(code: object, text: str, kind: str, tail: str) -> None:
    """An error event inside a stream is text: at most a ServingFailure."""
    from components.vllm_adapter.vllm_errors import error_from_event

    event = f'data: {json.dumps({"error": {"message": text, "type": kind, "param": None, "code": code}})}{tail}'
    assert not is_engine_fault(error_from_event(event))
    assert not is_engine_fault(error_from_event(f'data: {{"error": "{text}"'))
    assert not is_engine_fault(error_from_event(f'data: {json.dumps({"error": text})}\n\n'))


def test_a_stream_error_event_is_the_engines_death_only_when_the_engine_says_so() -> None:
    """vLLM catches an EngineDeadError inside a stream and sends its text; the typed fact
    that names it is the engine client's own state, never the event's words."""
    import asyncio

    from components.vllm_adapter.vllm_bridge import Stream
    from components.vllm_adapter.vllm_errors import error_from_event

    def event(code: int, message: str) -> str:
        return f'data: {json.dumps({"error": {"message": message, "type": "X", "param": None, "code": code}})}\n\n'

    dead_words = "EngineCore encountered an issue. See stack trace (above) for the root cause."
    assert not is_engine_fault(error_from_event(event(500, dead_words), lambda: False))
    assert isinstance(error_from_event(event(500, "anything"), lambda: True), EngineDead)
    assert not is_engine_fault(error_from_event(event(400, "bad logit_bias"), lambda: True))

    async def source() -> object:
        yield 'data: {"choices": []}\n\n'
        yield event(500, dead_words)

    async def errors_of(engine_dead: bool) -> ServiceError | None:
        stream = Stream(source(), engine_dead=lambda: engine_dead)  # type: ignore[arg-type]
        events = [item async for item in stream]
        assert events[-1].endswith("data: [DONE]\n\n")
        return stream.error

    alive, dead = asyncio.run(errors_of(False)), asyncio.run(errors_of(True))
    assert alive is not None and not is_engine_fault(alive)
    assert isinstance(dead, EngineDead) and dead.engine_fault


def test_the_engine_state_the_stream_reads_is_vllms() -> None:
    """Canary: `OpenAIBridge.engine_dead` reads AsyncLLM.errored, and the dead engine's
    client raises EngineDeadError only after setting the flag that property reads."""
    import inspect

    from vllm.v1.engine import core_client
    from vllm.v1.engine.async_llm import AsyncLLM

    assert isinstance(inspect.getattr_static(AsyncLLM, "errored"), property)
    assert "resources.engine_dead" in inspect.getsource(AsyncLLM.errored.fget)  # type: ignore[union-attr]
    source = inspect.getsource(core_client.BackgroundResources.validate_alive)
    assert source.index("self.engine_dead = True") < source.index("raise EngineDeadError()")
