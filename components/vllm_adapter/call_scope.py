"""How an `EngineCall` reaches the code inside vLLM that needs it (the patched steps in
components/vllm_adapter/vllm_hooks.py and grammar_reuse.py): vLLM calls those steps with its
own arguments only, so the facts travel in this request's context. The ContextVars live
here and nowhere else; no module outside the adapter reads or sets them (the architecture
test checks that): the service hands its facts to the bridge's methods as an `EngineCall`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

from components.vllm_adapter.engine_call import EngineCall

T = TypeVar("T")

_call: ContextVar[EngineCall | None] = ContextVar("engine_call", default=None)
# Apart from the call: vLLM's request models build structural-tag grammars while FastAPI
# validates the body, before any engine call exists.
_built: ContextVar[frozenset[str]] = ContextVar("built_grammars", default=frozenset())


def current() -> EngineCall | None:
    """The engine call being made in this context; None outside one (the warm-up)."""
    return _call.get()


def built_grammars() -> frozenset[str]:
    return _built.get()


def expect_built_grammars(keys: frozenset[str]) -> None:
    """For the rest of the calling request (an awaited coroutine sets its caller's context):
    vLLM's request-model validators, which FastAPI runs next, skip the builds the grammar
    guard already made for this request (components/serving/grammar_guard.py)."""
    _built.set(keys)


@contextmanager
def engine_call(call: EngineCall) -> Iterator[None]:
    """`call` is current inside the block, and its grammars are the ones already built."""
    token, built = _call.set(call), _built.set(call.grammars)
    try:
        yield
    finally:
        _built.reset(built)
        _call.reset(token)


class Scoped(Generic[T]):
    """`source` read with `call` current at every step, and only then: vLLM reaches the
    engine (a streamed Responses request renders, a chat stream's first step adds its
    request) while its stream is read. Set and reset within each step, in the reading task,
    so that the context never leaks past a step. Closing this closes `source` (for vLLM's
    generators: the engine request is aborted), read or not."""

    def __init__(self, source: AsyncIterator[T], call: EngineCall) -> None:
        self._source = source
        self._call = call

    def __aiter__(self) -> Scoped[T]:
        return self

    async def __anext__(self) -> T:
        with engine_call(self._call):
            return await anext(self._source)

    async def aclose(self) -> None:
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()
