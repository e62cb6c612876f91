from __future__ import annotations

import asyncio

import pytest

from components.core.errors import InvalidRequest, Overloaded, RateLimited, Unavailable
from components.core.priority import BATCH, STANDARD, engine_priority, is_batch
from components.serving.admission import Admission
from components.serving.ranking import ClassRanking, batch_seqs

WAIT = 10.0


def classes(capacity: int, max_wait_s: float = WAIT, low_share: float = 1.0, aging_s: float = 10.0,
            batch_size: int | None = None) -> ClassRanking:
    """The service's ranking as components/app/parts.py builds it from the settings."""
    return ClassRanking(batch_seqs(batch_size or capacity, low_share), aging_s, max_wait_s)


def running_batch(admission: Admission) -> int:
    return sum(seqs for klass, seqs in admission.running_by_class.items() if is_batch(klass))


def test_runs_up_to_capacity_then_queues_then_refuses() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=2, max_waiting=1, max_wait_s=WAIT)
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
        assert admission.running == 0 and admission.running_for("a") == 0 and admission.queued_for("a") == 0

    asyncio.run(scenario())


def test_counts_sequences_not_requests() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=4, max_waiting=2, max_wait_s=WAIT)
        big = await admission.acquire("a", cost=3)
        assert admission.running == 3
        waiting = asyncio.ensure_future(admission.acquire("b", cost=2))
        await asyncio.sleep(0)
        assert admission.waiting == 1  # 3 + 2 > 4
        with pytest.raises(InvalidRequest):
            await admission.acquire("a", cost=5)  # more than ever fits
        generous = Admission(capacity=4, max_waiting=2, max_wait_s=WAIT, running_per_key=10)
        with pytest.raises(InvalidRequest):
            await generous.acquire("a", cost=5)  # a share above capacity does not make it fit
        big.release()
        small = await waiting
        assert admission.running == 2
        small.release()

    asyncio.run(scenario())


def test_per_key_queue_share_and_running_share() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=4, max_waiting=8, max_wait_s=WAIT, running_per_key=2, queued_per_key=1)
        held = [await admission.acquire("greedy"), await admission.acquire("greedy")]
        assert admission.running == 2  # capacity is free, but the key has its share running
        queued = asyncio.ensure_future(admission.acquire("greedy"))
        await asyncio.sleep(0)
        assert admission.waiting == 1
        with pytest.raises(RateLimited) as info:
            await admission.acquire("greedy")
        assert info.value.code == "concurrency_limit_exceeded" and info.value.headers["retry-after"]
        with pytest.raises(InvalidRequest):
            await admission.acquire("greedy", cost=3)  # more than the key may ever run
        polite = await admission.acquire("polite")  # another key runs at once
        held[0].release()
        (await queued).release()
        for slot in (held[1], polite):
            slot.release()
        assert admission.running == 0 and admission.waiting == 0

    asyncio.run(scenario())


def test_fewest_running_first_and_a_new_request_that_fits_starts_at_once() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=4, max_waiting=8, max_wait_s=WAIT)
        a = [await admission.acquire("a", cost=3)]
        a_more = asyncio.ensure_future(admission.acquire("a", cost=2))  # 3 + 2 > 4: waits
        await asyncio.sleep(0)
        # One sequence is free and B runs nothing: B starts now, not after A's backlog.
        b = await asyncio.wait_for(admission.acquire("b", cost=1), 1)
        a[0].release()
        (await a_more).release()
        b.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_a_big_waiting_request_does_not_hold_back_smaller_ones() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT)
        b = await admission.acquire("b", cost=6)
        big = asyncio.ensure_future(admission.acquire("a", cost=8))  # fewest running, but does not fit
        await asyncio.sleep(0)
        c = await asyncio.wait_for(admission.acquire("c", cost=1), 1)  # fits in the 2 free: starts
        assert not big.done()
        b.release()
        c.release()
        (await big).release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_queue_wait_is_bounded() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=0.05)
        slot = await admission.acquire("a")
        with pytest.raises(Overloaded) as info:
            await admission.acquire("b")
        assert info.value.headers["retry-after"]
        assert admission.waiting == 0 and admission.queued_for("b") == 0
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=WAIT)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("b"))
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 0 and admission.queued_for("b") == 0
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_waiter_cancelled_after_being_granted_gives_the_capacity_back() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=WAIT)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("b"))
        await asyncio.sleep(0)
        slot.release()  # granted to the waiter, which has not run yet...
        waiter.cancel()  # ...and is cancelled from outside (BentoML's timeout, say)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.running == 0 and admission.running_for("b") == 0

    asyncio.run(scenario())


def test_release_is_idempotent() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=0, max_wait_s=WAIT)
        slot = await admission.acquire("a")
        slot.release()
        slot.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_close_refuses_new_and_queued_requests_with_its_code() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=WAIT)
        slot = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("a"))
        await asyncio.sleep(0)
        admission.close("gone", code="engine_dead")
        with pytest.raises(Unavailable) as info:
            await waiter
        assert info.value.code == "engine_dead"
        with pytest.raises(Unavailable):
            await admission.acquire("a")
        slot.release()
        assert admission.running == 0 and admission.queued_for("a") == 0

    asyncio.run(scenario())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_batch_class_leaves_room_for_the_classes_above() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=4, max_waiting=8, max_wait_s=WAIT, ranking=classes(4, low_share=0.5))
        batch = [await admission.acquire(f"b{i}", level=10) for i in range(2)]
        third_batch = asyncio.ensure_future(admission.acquire("b2", level=10))
        await asyncio.sleep(0)
        assert admission.running == 2 and admission.waiting == 1  # the batch share is full
        interactive = await admission.acquire("i", level=0)  # room at once
        assert admission.running == 3 and running_batch(admission) == 2
        batch[0].release()
        await third_batch
        assert running_batch(admission) == 2
        interactive.release()
        assert admission.running == 2

    asyncio.run(scenario())


def test_a_higher_class_starts_first_and_aging_keeps_the_lower_from_starving() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=1, max_waiting=8, max_wait_s=WAIT, clock=clock, ranking=classes(1, aging_s=10))
        running = await admission.acquire("x", level=5)
        order: list[str] = []

        async def wait(key: str, priority: int) -> None:
            slot = await admission.acquire(key, level=priority)
            order.append(key)
            slot.release()

        batch = asyncio.ensure_future(wait("batch", 10))
        await asyncio.sleep(0)
        clock.now += 1
        interactive = asyncio.ensure_future(wait("interactive", 0))
        await asyncio.sleep(0)
        running.release()
        await asyncio.gather(batch, interactive)
        assert order == ["interactive", "batch"]  # the later, higher class first

        running = await admission.acquire("x", level=5)
        order.clear()
        batch = asyncio.ensure_future(wait("batch", 10))
        await asyncio.sleep(0)
        clock.now += 25  # two aging steps: batch now ranks as interactive, and it is older
        interactive = asyncio.ensure_future(wait("interactive", 0))
        await asyncio.sleep(0)
        running.release()
        await asyncio.gather(batch, interactive)
        assert order == ["batch", "interactive"]

    asyncio.run(scenario())


def test_aging_does_not_let_a_busy_key_overtake_another_key() -> None:
    # Aging is against starvation: a key with sequences running is not starving, so its
    # queued requests, however old, do not outrank another key's fresh request of the same
    # class (CI saw this: a greedy key's queued streams aged past the polite key's request).
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=2, max_waiting=8, max_wait_s=WAIT, clock=clock, ranking=classes(2, aging_s=10))
        greedy = [await admission.acquire("greedy"), await admission.acquire("greedy")]
        order: list[str] = []

        async def wait(key: str) -> None:
            slot = await admission.acquire(key)
            order.append(key)
            slot.release()

        queued = asyncio.ensure_future(wait("greedy"))
        await asyncio.sleep(0)
        clock.now += 25  # the greedy key's queued request is two aging steps old
        polite = asyncio.ensure_future(wait("polite"))
        await asyncio.sleep(0)
        greedy[0].release()
        assert admission.running_for("polite") == 1 and admission.queued_for("greedy") == 1
        greedy[1].release()
        await asyncio.gather(queued, polite)
        assert order == ["polite", "greedy"]

    asyncio.run(scenario())


def test_the_batch_class_share_is_of_the_engine_batch_not_of_vllms_queue_too() -> None:
    async def scenario() -> None:
        # 4 sequences run, 4 more wait in vLLM's queue: the batch class may hold half of the 4.
        admission = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT,
                              ranking=classes(8, low_share=0.5, batch_size=4))
        held = [await admission.acquire("b", level=BATCH) for _ in range(2)]
        queued = asyncio.ensure_future(admission.acquire("b", level=BATCH))
        await asyncio.sleep(0)
        assert admission.running == 2 and admission.waiting == 1
        queued.cancel()
        for slot in held:
            slot.release()

    asyncio.run(scenario())


def test_vllms_queue_keeps_the_fair_order_a_busy_key_after_another() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT, clock=clock, ranking=classes(8, aging_s=10))
        busy = [await admission.acquire("busy") for _ in range(3)]
        other = await admission.acquire("other")
        # The same moment: another key's request goes ahead of a busy key's third.
        first, second, third = (slot.engine_priority for slot in busy)
        assert other.engine_priority < third and first < second < third
        # n x prompts sequences share one priority, ranked as their last.
        fan_out = await admission.acquire("other", cost=3)
        assert fan_out.engine_priority == engine_priority(0, STANDARD, 1 + 2, 2000, int(WAIT * 1000))
        # Minutes later, with a short aging step, the other key still goes first: a busy
        # key's request yields for up to max_wait_s per sequence its key runs.
        quick = Admission(capacity=16, max_waiting=8, max_wait_s=600, clock=clock, ranking=classes(16, 600, aging_s=1))
        greedy = [await quick.acquire("greedy") for _ in range(8)]
        clock.now += 120
        assert (await quick.acquire("polite")).engine_priority < min(slot.engine_priority for slot in greedy[4:])
        for slot in (*busy, other, fan_out):
            slot.release()

    asyncio.run(scenario())


def test_vllms_queue_ages_like_the_fair_queue() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT, clock=clock, ranking=classes(8, aging_s=10))
        batch = await admission.acquire("b", level=BATCH)
        clock.now += 9.9  # a standard request less than one aging step later goes first...
        soon = await admission.acquire("s1")
        clock.now += 0.2  # ...one arriving after that does not: no class starves in vLLM's queue
        later = await admission.acquire("s2")
        assert soon.engine_priority < batch.engine_priority < later.engine_priority
        # Never aging (0): the classes are strict, and the value stays a 64-bit integer.
        strict = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT, clock=clock, ranking=classes(8, aging_s=0))
        first_batch = await strict.acquire("b", level=BATCH)
        clock.now += 10**6
        assert (await strict.acquire("s")).engine_priority < first_batch.engine_priority
        assert engine_priority(2**62, 10**30, 10**30, 10**9, 10**9) < 2**63
        for slot in (batch, soon, later):
            slot.release()

    asyncio.run(scenario())


def test_a_batch_request_that_could_never_start_is_refused_at_once() -> None:
    async def scenario() -> None:
        never_ages = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT, ranking=classes(8, low_share=0.5, aging_s=0))
        with pytest.raises(InvalidRequest):
            await never_ages.acquire("b", cost=5, level=BATCH)  # the batch class holds at most 4
        fits = await never_ages.acquire("b", cost=4, level=BATCH)
        fits.release()
        # With aging it waits: once aged it is no longer held to the batch share.
        ages = Admission(capacity=8, max_waiting=8, max_wait_s=WAIT, ranking=classes(8, low_share=0.5, aging_s=10))
        pending = asyncio.ensure_future(ages.acquire("b", cost=5, level=BATCH))
        await asyncio.sleep(0)
        assert ages.waiting == 1
        pending.cancel()

    asyncio.run(scenario())


def test_a_refused_request_leaves_no_trace_in_the_queue() -> None:
    async def scenario() -> None:
        seen: list[tuple[int, int]] = []
        admission = Admission(capacity=1, max_waiting=2, max_wait_s=WAIT, queued_per_key=1,
                              on_change=lambda running, waiting: seen.append((running, waiting)))
        slot = await admission.acquire("a")
        queued = asyncio.ensure_future(admission.acquire("a"))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited):
            await admission.acquire("a")  # the key's one queue place is taken
        other = asyncio.ensure_future(admission.acquire("b"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await admission.acquire("c")  # both queue places are taken
        assert admission.waiting == 2 and (admission.queued_for("a"), admission.queued_for("c")) == (1, 0)
        assert seen[-1] == (1, 2)
        slot.release()
        (await queued).release()
        (await other).release()
        assert admission.running == 0 and admission.waiting == 0 and seen[-1] == (0, 0)

    asyncio.run(scenario())
