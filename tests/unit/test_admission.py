from __future__ import annotations

import asyncio

import pytest

from components.admission import Admission
from components.errors import Overloaded, Unavailable


def test_runs_up_to_max_then_queues_then_refuses() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=2, max_waiting=1)
        first, second = await admission.acquire(), await admission.acquire()
        queued = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.running == 2 and admission.waiting == 1
        with pytest.raises(Overloaded) as info:
            await admission.acquire()
        assert info.value.headers["retry-after"]
        first.release()
        third = await queued  # the slot passed to the waiter
        assert admission.running == 2 and admission.waiting == 0
        for slot in (second, third):
            slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1, max_waiting=2)
        slot = await admission.acquire()
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 0
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_release_is_idempotent() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1, max_waiting=0)
        slot = await admission.acquire()
        slot.release()
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_close_refuses_new_and_queued_requests() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1, max_waiting=2)
        slot = await admission.acquire()
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        admission.close("draining")
        with pytest.raises(Unavailable):
            await waiter
        with pytest.raises(Unavailable):
            await admission.acquire()
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())
