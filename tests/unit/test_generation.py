from __future__ import annotations

import asyncio

import pytest

from components.errors import ClientClosed, GenerationTimeout, InvalidRequest
from components.generation import _Interrupts, _Writer


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
        async with _Interrupts(never_disconnects(), _Writer(sink, 1)) as interrupts:
            asyncio.get_running_loop().call_later(0.01, interrupts.interrupt, GenerationTimeout("limit"))
            await swallowing_work()

    with pytest.raises(GenerationTimeout):
        asyncio.run(scenario())


def test_a_disconnect_is_client_closed() -> None:
    async def scenario() -> None:
        async def receive():  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async with _Interrupts(receive, _Writer(sink, 1)):
            await asyncio.sleep(10)

    with pytest.raises(ClientClosed):
        asyncio.run(scenario())


def test_an_outer_cancellation_wins_and_gets_no_second_answer() -> None:
    async def scenario() -> None:
        async def request() -> None:
            async with _Interrupts(never_disconnects(), _Writer(sink, 1)):
                await swallowing_work()

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.01)
        task.cancel()  # BentoML's timeout middleware, say: it answers the client itself
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_no_interrupt_after_the_last_byte() -> None:
    async def scenario() -> None:
        write = _Writer(sink, 1)
        async with _Interrupts(never_disconnects(), write) as interrupts:
            await write({"type": "http.response.start", "status": 200, "headers": []})
            await write({"type": "http.response.body", "body": b"done"})
            interrupts.interrupt(ClientClosed("uvicorn reports a disconnect after every response"))
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
