from __future__ import annotations

import asyncio

from components.admission import Admission
from components.breaker import CircuitBreaker, State
from components.errors import GenerationTimeout, InvalidRequest, Unavailable
from components.lifecycle import Gate, is_engine_fault


def test_engine_faults_are_5xx_but_not_refusals() -> None:
    assert is_engine_fault(Unavailable("x", code="engine_dead"))
    assert is_engine_fault(GenerationTimeout("x"))
    assert not is_engine_fault(InvalidRequest("x"))
    assert not is_engine_fault(Unavailable("x", code="shutting_down"))
    assert not is_engine_fault(None)


def gate(timeout: float = 0) -> tuple[Gate, list[list[str]]]:
    aborted: list[list[str]] = []

    async def aborter(ids):  # type: ignore[no-untyped-def]
        aborted.append(list(ids))

    breaker = CircuitBreaker(min_calls=1, failure_rate=0.5)
    return Gate(Admission(2, 2), breaker, aborter, timeout), aborted


def test_timeout_aborts_in_the_engine_and_counts_as_a_fault() -> None:
    async def scenario() -> None:
        g, aborted = gate(timeout=0.05)
        ticket = await g.enter(["chatcmpl-1"])
        await asyncio.sleep(0.1)
        assert isinstance(ticket.abort_error, GenerationTimeout)
        assert aborted == [["chatcmpl-1"]]
        ticket.finish()
        assert g.breaker.state is State.OPEN
        assert not g.inflight and g.admission.running == 0

    asyncio.run(scenario())


def test_client_disconnect_is_not_a_fault() -> None:
    async def scenario() -> None:
        g, _ = gate()
        ticket = await g.enter(["x"])
        ticket.finish(cancelled=True)
        assert g.breaker.state is State.CLOSED

    asyncio.run(scenario())


def test_drain_waits_then_aborts_what_is_left() -> None:
    async def scenario() -> None:
        g, aborted = gate()
        quick = await g.enter(["a"])
        slow = await g.enter(["b"])
        asyncio.get_running_loop().call_later(0.05, quick.finish)

        async def finish_when_aborted() -> None:
            while slow.abort_error is None:
                await asyncio.sleep(0.01)
            slow.finish()

        finisher = asyncio.ensure_future(finish_when_aborted())
        clean = await g.drain(timeout_s=0.2, poll_s=0.01)
        await finisher
        assert clean is False
        assert aborted == [["b"]] and slow.abort_error.code == "shutting_down"
        assert g.breaker.state is State.CLOSED  # draining aborts are not engine faults

    asyncio.run(scenario())


def test_out_of_memory_is_a_503_engine_fault_reported_once() -> None:
    from components.vllm_bridge import to_service_error

    error = to_service_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert error.status == 503 and error.code == "out_of_memory"
    assert is_engine_fault(error)
    seen: list[str] = []

    async def scenario() -> None:
        g, _ = gate()
        g.on_error = lambda e: seen.append(e.code or "")
        ticket = await g.enter(["x"])
        ticket.finish(error)
        ticket.finish(error)  # finish is idempotent

    asyncio.run(scenario())
    assert seen == ["out_of_memory"]
