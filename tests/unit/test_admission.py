from __future__ import annotations

import asyncio

import pytest

from components.admission import Admission
from components.errors import InvalidRequest, Overloaded, RateLimited, Unavailable


def test_runs_up_to_capacity_then_queues_then_refuses() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=2, max_waiting=1)
        first, second = await admission.acquire("a"), await admission.acquire("a")
        queued = asyncio.ensure_future(admission.acquire("a"))
        await asyncio.sleep(0)
        assert admission.running == 2 and admission.waiting == 1
        with pytest.raises(Overloaded) as info:
            await admission.acquire("a")
        assert info.value.headers["retry-after"]
        first.release()
        third = await queued  # the capacity passed to the waiter
        assert admission.running == 2 and admission.waiting == 0
        for slot in (second, third):
            slot.release()
        assert admission.running == 0 and admission.held("a") == 0

    asyncio.run(scenario())


def test_counts_sequences_not_requests() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=4, max_waiting=2)
        big = await admission.acquire("a", cost=3)
        assert admission.running == 3
        waiting = asyncio.ensure_future(admission.acquire("b", cost=2))
        await asyncio.sleep(0)
        assert admission.waiting == 1  # 3 + 2 > 4
        with pytest.raises(InvalidRequest):
            await admission.acquire("a", cost=5)  # more than ever fits
        big.release()
        small = await waiting
        assert admission.running == 2
        small.release()

    asyncio.run(scenario())


def test_per_key_cap_counts_running_and_queued() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=2, max_waiting=8, per_key=3)
        held = [await admission.acquire("greedy"), await admission.acquire("greedy")]
        queued = asyncio.ensure_future(admission.acquire("greedy"))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited) as info:
            await admission.acquire("greedy")
        assert info.value.code == "concurrency_limit_exceeded" and info.value.headers["retry-after"]
        other = asyncio.ensure_future(admission.acquire("polite"))  # another key still gets a place
        await asyncio.sleep(0)
        assert admission.waiting == 2
        held[0].release()
        # Fair: the key with nothing running goes first, although it queued later.
        polite = await other
        assert not queued.done()
        held[1].release()
        (await queued).release()
        polite.release()
        assert admission.running == 0 and admission.waiting == 0

    asyncio.run(scenario())


def test_queue_wait_is_bounded() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=0.05)
        slot = await admission.acquire("a")
        with pytest.raises(Overloaded) as info:
            await admission.acquire("b")
        assert info.value.headers["retry-after"]
        assert admission.waiting == 0 and admission.held("b") == 0
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("b"))
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 0 and admission.held("b") == 0
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_waiter_cancelled_after_being_granted_gives_the_capacity_back() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("b"))
        await asyncio.sleep(0)
        slot.release()  # granted to the waiter, which has not run yet...
        waiter.cancel()  # ...and is cancelled from outside (BentoML's timeout, say)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.running == 0 and admission.held("b") == 0

    asyncio.run(scenario())


def test_release_is_idempotent() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=0)
        slot = await admission.acquire("a")
        slot.release()
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_close_refuses_new_and_queued_requests() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("a"))
        await asyncio.sleep(0)
        admission.close("draining")
        with pytest.raises(Unavailable):
            await waiter
        with pytest.raises(Unavailable):
            await admission.acquire("a")
        slot.release()
        assert admission.running == 0 and admission.held("a") == 0

    asyncio.run(scenario())
