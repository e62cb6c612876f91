from __future__ import annotations

import asyncio

import pytest

from components.core.errors import ClientClosed, GenerationTimeout, InvalidRequest, StreamStalled
from components.serving.interrupts import Interrupts, Writer


def never_disconnects():  # type: ignore[no-untyped-def]
    async def receive():  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()
    return receive


async def sink(message):  # type: ignore[no-untyped-def]
    pass


async def swallowing_work() -> None:
    """Like vLLM's non-streaming handler: a cancellation becomes its own 400."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise InvalidRequest("Client disconnected") from None


def test_an_interrupt_raises_its_reason_whatever_the_block_ended_with() -> None:
    async def scenario() -> None:
        async with Interrupts(never_disconnects(), Writer(sink, 1)) as interrupts:
            asyncio.get_running_loop().call_later(0.01, interrupts.interrupt, GenerationTimeout("limit"))
            await swallowing_work()

    with pytest.raises(GenerationTimeout):
        asyncio.run(scenario())


def test_a_disconnect_is_client_closed() -> None:
    async def scenario() -> None:
        async def receive():  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async with Interrupts(receive, Writer(sink, 1)):
            await asyncio.sleep(10)

    with pytest.raises(ClientClosed):
        asyncio.run(scenario())


def test_an_outer_cancellation_wins_and_gets_no_second_answer() -> None:
    async def scenario() -> None:
        async def request() -> None:
            async with Interrupts(never_disconnects(), Writer(sink, 1)):
                await swallowing_work()

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        task.cancel()  # BentoML's timeout middleware, say: it answers the client itself
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_no_interrupt_after_the_last_byte() -> None:
    async def scenario() -> None:
        write = Writer(sink, 1)
        async with Interrupts(never_disconnects(), write) as interrupts:
            await write({"type": "http.response.start", "status": 200, "headers": []})
            await write({"type": "http.response.body", "body": b"done"})
            interrupts.interrupt(ClientClosed("uvicorn reports a disconnect after every response"))
            await asyncio.sleep(0.01)

    asyncio.run(scenario())


async def blocked(message):  # type: ignore[no-untyped-def]
    await asyncio.Event().wait()  # a full socket that never drains


def test_a_send_that_waits_the_stall_limit_is_cut_inside_the_interrupts() -> None:
    async def scenario() -> float:
        write = Writer(blocked, 0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(StreamStalled):
            async with Interrupts(never_disconnects(), write):
                await write({"type": "http.response.start", "status": 200, "headers": []})
        return asyncio.get_running_loop().time() - started

    assert 0.2 <= asyncio.run(scenario()) < 5


def test_the_last_message_is_cut_too_and_outside_the_interrupts_each_send_is_timed() -> None:
    async def scenario() -> None:
        calls = []

        async def blocks_on_the_last(message):  # type: ignore[no-untyped-def]
            calls.append(message["type"])
            if not message.get("more_body", False):
                await blocked(message)

        write = Writer(blocks_on_the_last, 0.2)
        with pytest.raises(StreamStalled):
            async with Interrupts(never_disconnects(), write):
                await write({"type": "http.response.body", "body": b"x", "more_body": True})
                await write({"type": "http.response.body", "body": b""})
        assert not write.complete
        with pytest.raises(StreamStalled):  # an error answer written after the interrupts
            await Writer(blocked, 0.2)({"type": "http.response.start", "status": 500, "headers": []})

    asyncio.run(scenario())


def test_many_quick_sends_are_not_a_stall_however_long_the_stream() -> None:
    async def scenario() -> None:
        async def slow_but_reading(message):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.05)

        write = Writer(slow_but_reading, 0.5)
        async with Interrupts(never_disconnects(), write):
            for _ in range(20):  # 1 s in all, twice the limit
                await write({"type": "http.response.body", "body": b"x", "more_body": True})
            await write({"type": "http.response.body", "body": b""})
        assert write.complete

    asyncio.run(scenario())


def test_a_200s_middle_chunks_go_to_the_wire_and_its_start_and_end_through_the_middleware() -> None:
    async def scenario(status: int) -> tuple[list[bytes], list[bytes]]:
        chain: list[bytes] = []
        wire: list[bytes] = []

        async def through_middleware(message):  # type: ignore[no-untyped-def]
            chain.append(message.get("body", b"start"))

        async def to_wire(message):  # type: ignore[no-untyped-def]
            wire.append(message["body"])

        write = Writer(through_middleware, 1, wire=to_wire)
        async with Interrupts(never_disconnects(), write):
            await write({"type": "http.response.start", "status": status, "headers": []})
            await write({"type": "http.response.body", "body": b"a", "more_body": True})
            await write({"type": "http.response.body", "body": b"b", "more_body": True})
            await write({"type": "http.response.body", "body": b""})
        return chain, wire

    assert asyncio.run(scenario(200)) == ([b"start", b""], [b"a", b"b"])
    # Any other answer goes through the middleware whole (Anthropic's errors are rewritten there).
    assert asyncio.run(scenario(400)) == ([b"start", b"a", b"b", b""], [])
