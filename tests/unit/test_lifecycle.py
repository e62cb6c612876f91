from __future__ import annotations

import asyncio

import pytest

from components.serving.admission import Admission
from components.serving.breaker import CircuitBreaker, State
from components.core.errors import ClientClosed, EngineDead, GenerationTimeout, InvalidRequest, Unavailable
from components.serving.lifecycle import Gate


def test_only_engine_faults_are_engine_faults() -> None:
    assert EngineDead("x").engine_fault
    assert not GenerationTimeout("x").engine_fault
    assert not InvalidRequest("x").engine_fault
    assert not Unavailable("x", code="shutting_down").engine_fault
    assert not ClientClosed("x").engine_fault


def gate(timeout: float = 0, min_calls: int = 1) -> tuple[Gate, list[list[str]]]:
    aborted: list[list[str]] = []

    async def aborter(ids):  # type: ignore[no-untyped-def]
        aborted.append(list(ids))

    breaker = CircuitBreaker(min_calls=min_calls, failure_rate=0.5, half_open_calls=1)
    return Gate(Admission(2, 2, max_wait_s=10), breaker, aborter, timeout), aborted


def test_timeout_aborts_in_the_engine_frees_the_slot_at_once_and_is_no_fault() -> None:
    async def scenario() -> None:
        g, aborted = gate(timeout=0.05)
        async with await g.admit("k", 1, ["chatcmpl-1"]) as ticket:
            await asyncio.sleep(0.1)
            # The engine work is aborted: its slot is free although the HTTP side still runs.
            assert isinstance(ticket.abort_error, GenerationTimeout)
            assert aborted == [["chatcmpl-1"]]
            assert not g.inflight and g.admission.running == 0
        assert g.breaker.state is State.CLOSED

    asyncio.run(scenario())


def test_engine_fault_opens_and_client_errors_never_close_a_half_open_breaker() -> None:
    async def scenario() -> None:
        clock = [0.0]
        g, _ = gate()
        g.breaker._clock = lambda: clock[0]
        with pytest.raises(EngineDead):
            async with await g.admit("k", 1, ["a"]):
                raise EngineDead("gone")
        assert g.breaker.state is State.OPEN
        clock[0] += g.breaker.open_seconds
        assert g.breaker.state is State.HALF_OPEN
        for _ in range(3):
            with pytest.raises(InvalidRequest):
                async with await g.admit("k", 1, ["b"]):
                    raise InvalidRequest("bad")
        assert g.breaker.state is State.HALF_OPEN  # 4xx say nothing of the engine
        async with await g.admit("k", 1, ["c"]):
            pass
        assert g.breaker.state is State.CLOSED

    asyncio.run(scenario())


def test_cancellation_releases_once_and_is_no_fault() -> None:
    async def scenario() -> None:
        g, _ = gate()
        started = asyncio.Event()

        async def request() -> None:
            async with await g.admit("k", 2, ["x"]):
                started.set()
                await asyncio.sleep(10)

        task = asyncio.ensure_future(request())
        await started.wait()
        assert g.admission.running == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert g.admission.running == 0 and not g.inflight
        assert g.breaker.state is State.CLOSED

    asyncio.run(scenario())


def test_drain_waits_then_aborts_what_is_left() -> None:
    async def scenario() -> None:
        g, aborted = gate()
        quick = await g.admit("k", 1, ["a"])
        slow = await g.admit("k", 1, ["b"])

        async def finish_quick() -> None:
            async with quick:
                await asyncio.sleep(0.05)

        finisher = asyncio.ensure_future(finish_quick())
        clean = await g.drain(timeout_s=0.2, poll_s=0.01)
        await finisher
        assert clean is False
        assert aborted == [["b"]] and slow.abort_error is not None and slow.abort_error.code == "shutting_down"
        assert g.admission.running == 0
        assert g.breaker.state is State.CLOSED  # draining aborts are not engine faults

    asyncio.run(scenario())


def test_out_of_memory_is_a_503_engine_fault_reported_once() -> None:
    import torch

    from components.vllm_adapter.vllm_bridge import to_service_error

    # An out-of-memory is a type the engine raises, never words in a message.
    error = to_service_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert error.status == 503 and error.code == "out_of_memory" and error.engine_fault
    seen: list[str] = []

    async def scenario() -> None:
        g, _ = gate()
        g.on_error = lambda e: seen.append(e.code or "")
        ticket = await g.admit("k", 1, ["x"])
        with pytest.raises(type(error)):
            async with ticket:
                raise error
        ticket.abort(error)  # after the end: nothing more happens

    asyncio.run(scenario())
    assert seen == ["out_of_memory"]


def test_only_engine_death_and_out_of_memory_are_engine_faults() -> None:
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    from components.vllm_adapter.vllm_bridge import to_service_error

    bug = to_service_error(IndexError("list index out of range"))
    assert bug.status == 500 and not bug.engine_fault
    assert "list index" not in bug.message  # internals stay in the log
    # vLLM wraps any exception inside generate() in EngineGenerateError, input processing too.
    assert not to_service_error(EngineGenerateError()).engine_fault
    assert to_service_error(EngineDeadError()).engine_fault
    assert to_service_error(MemoryError()).engine_fault
