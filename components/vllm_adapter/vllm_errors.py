"""vLLM's exceptions and error reports turned into our errors: one table by type (vLLM 0.32).

A fault is attributed by its type and origin, never by text (issue #24): vLLM's messages
echo the client's input, so only an EngineDeadError, an out-of-memory raised as a type, or
an engine that reports itself dead is the engine's fault, the only outcome the circuit
breaker counts. tests/unit/test_fault_attribution.py checks the table class by class.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

from components.core.errors import (
    ContextLengthExceeded,
    EngineDead,
    EngineOutOfMemory,
    ModelNotFound,
    Overloaded,
    ServiceError,
    ServingFailure,
    from_status,
)

logger = logging.getLogger(__name__)


# How one row of the table maps its exception.
Mapping = Callable[[Exception], ServiceError]


@functools.cache
def error_table() -> tuple[tuple[type[Exception], Mapping], ...]:
    """Every exception class that can reach the request path, most specific first; the
    first row the exception is an instance of maps it (tests/unit/test_fault_attribution.py
    checks that no row hides a later one and that each status is vLLM's own).

    A fault is the engine's by its type and origin alone (issue #24): vLLM's messages echo
    the client's input (a `logit_bias` key, a tool name), so no wording is read here. The
    statuses are those of vLLM's server (`create_error_response`), except the engine's
    faults: 503s, the only outcome the circuit breaker counts.
    """
    import jinja2
    import torch
    from vllm.exceptions import (
        GenerationError,
        GracefulHTTPError,
        MaxQueuedTokensError,
        QueueOverflowError,
        RetryableRequestError,
        VLLMClientError,
        VLLMError,
        VLLMNotFoundError,
        VLLMServerError,
        VLLMUnprocessableEntityError,
        VLLMValidationError,
    )
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    return (
        (EngineDeadError, _engine_dead),
        (EngineGenerateError, _generation_failed),
        (torch.OutOfMemoryError, _out_of_memory),
        (MemoryError, _out_of_memory),
        (QueueOverflowError, _engine_busy),
        (MaxQueuedTokensError, _engine_busy),
        (GracefulHTTPError, _with_its_status),
        (VLLMValidationError, _status(400)),
        (VLLMUnprocessableEntityError, _status(422)),
        (VLLMNotFoundError, _status(404)),
        (VLLMClientError, _status(400)),
        (RetryableRequestError, _status(503)),
        (GenerationError, _status(500)),
        (VLLMServerError, _status(500)),
        (VLLMError, _status(500)),
        # vLLM's fallbacks for the exceptions its code still raises untyped.
        (ValueError, _status(400)),
        (TypeError, _status(400)),
        (OverflowError, _status(400)),
        (NotImplementedError, _status(501)),
        (jinja2.TemplateError, _status(400)),
        # A bug a request's content can trigger (an IndexError formatting logprobs).
        (Exception, _status(500)),
    )


def to_service_error(exc: BaseException) -> ServiceError:
    """Our error for an exception raised by vLLM's serving layer or engine, by the table."""
    if isinstance(exc, ServiceError):
        return exc
    if not isinstance(exc, Exception):
        raise exc
    for kind, mapping in error_table():
        if isinstance(exc, kind):
            return mapping(exc)
    raise AssertionError("the table's last row is Exception")  # pragma: no cover


def is_out_of_memory(exc: BaseException) -> bool:
    """An out-of-memory by its type: MemoryError or torch's, raised as itself or as the
    cause the engine's generate() wraps in EngineGenerateError. Never by its message."""
    import torch
    from vllm.v1.engine.exceptions import EngineGenerateError

    current: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; a cycle must not loop
        if isinstance(current, (MemoryError, torch.OutOfMemoryError)):
            return True
        if not isinstance(current, EngineGenerateError):
            return False
        current = current.__cause__
    return False


_DEAD = "The inference engine is not running; retry later."


def _engine_dead(exc: Exception) -> ServiceError:
    logger.error("engine died: %s", exc)
    return EngineDead(_DEAD)


def _out_of_memory(exc: Exception) -> ServiceError:
    logger.error("engine out of memory: %r", exc)
    return EngineOutOfMemory("The inference engine ran out of memory; retry later.")


def _generation_failed(exc: Exception) -> ServiceError:
    # vLLM wraps any exception inside generate() in this, input processing included: what
    # a request's content can trigger is not the engine's health; only a typed
    # out-of-memory it carries is.
    if is_out_of_memory(exc):
        return _out_of_memory(exc)
    logger.error("engine failed a generation: %r", exc.__cause__)
    return ServingFailure("The inference engine failed to process the request.")


def _engine_busy(exc: Exception) -> ServiceError:
    # vLLM's own admission bounds: a refusal, not a fault.
    return Overloaded("The inference engine is at capacity; retry shortly.", headers={"retry-after": "1"})


def _with_its_status(exc: Exception) -> ServiceError:
    # GracefulHTTPError carries the status vLLM answers it with.
    return _as_vllm_reports(exc, int(getattr(exc, "http_status", 500)))


def _status(status: int) -> Mapping:
    return lambda exc: _as_vllm_reports(exc, status)


def _as_vllm_reports(exc: Exception, status: int) -> ServiceError:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    # vLLM's message, stripped of addresses and paths, and the field it names.
    info = create_error_response(exc).error
    return from_error_info(status, info.message, info.param)


# vLLM 0.32's wording for a prompt (plus max_tokens) beyond the context.
_CONTEXT_MARKERS = ("maximum context length", "context length", "max_model_len", "too long")


def from_error_info(status: int, message: str, param: str | None) -> ServiceError:
    """Our error for one of vLLM's given as a status and text (an ErrorResponse, a stream's
    error event, a row of the table): the only place that reads vLLM's error wording, and
    only to name a 4xx. Never an engine fault, whatever the text says: vLLM's messages echo
    the client's input, and an engine fault is known by its type alone (`error_table`)."""
    lowered = message.lower()
    if status == 400 and any(marker in lowered for marker in _CONTEXT_MARKERS):
        return ContextLengthExceeded(message, param=param)
    if status == 404 and "model" in lowered:
        return ModelNotFound(message, param=param or "model")
    if status >= 500:
        # vLLM's messages for server faults can hold internals; keep them in the log only.
        logger.error("serving error %s: %s", status, message)
        message = "The inference engine failed to process the request."
    return from_status(int(status), message, param)


def error_from_event(event: str, engine_dead: Callable[[], bool] = lambda: False) -> ServiceError:
    """Our error for vLLM's error event inside a stream. vLLM caught the exception and kept
    only its status and text, which may echo the client's input: a 5xx here is the engine's
    fault only when the engine reports itself dead (how an EngineDeadError reaches a stream)."""
    try:
        info = json.loads(event[len("data: ") :].split("\n", 1)[0])["error"]
        status, message, param = int(info.get("code") or 500), str(info.get("message")), info.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        status, message, param = 500, "malformed error event from the engine", None
    if not 400 <= status <= 599:
        status = 500
    if status >= 500 and engine_dead():
        logger.error("engine died during a stream: %s", message)
        return EngineDead(_DEAD)
    return from_error_info(status, message, param if isinstance(param, str) else None)
