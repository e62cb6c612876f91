from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.errors import Overloaded, RateLimited
from components.core.priority import BATCH, INTERACTIVE, STANDARD
from components.serving.admission import Admission, Slot
from components.serving.deadlines import (
    ServiceRate,
    engine_waiting_before,
    must_finish,
    over_share,
    predicted_start,
    retry_after,
)
from components.serving.ranking import Choice, ClassRanking, Running, Waiting

WAIT = 30.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def primed(admission: Admission, clock: Clock, key: str = "warm") -> list[Slot]:
    """Fill the engine's batch with `key`'s sequences, then let one complete per second a
    few times: a measured rate of one sequence per second."""
    slots = [await admission.acquire(key) for _ in range(admission.batch_size)]
    for _ in range(5):
        clock.t += 1
        slots.pop(0).release()
        slots.append(await admission.acquire(key))
    return slots


def test_the_rate_counts_only_completions_while_the_batch_is_full() -> None:
    rate = ServiceRate(window_s=100, min_completions=2)
    rate.observe(0, running=1, batch=2)
    for t in (1, 2, 3):  # the batch has room: how much work there was, not how fast it goes
        rate.completed(t, 1, running_before=1, batch=2)
    assert rate.rate(3) is None
    rate.observe(10, running=2, batch=2)
    for t in (11, 12, 13):
        rate.completed(t, 1, running_before=2, batch=2)
    assert rate.rate(13) == pytest.approx(1.0)
    rate.observe(13, running=1, batch=2)
    assert rate.rate(50) == pytest.approx(1.0)  # idle time is not service time
    assert rate.rate(200) is None  # out of the window: no estimate any more


def test_a_bursts_first_seconds_without_completions_do_not_read_as_a_slow_engine() -> None:
    rate = ServiceRate(window_s=30, min_completions=4)
    rate.observe(0, running=8, batch=4)  # a burst after a quiet time fills the batch at once
    t = 6.0  # its first requests finish only after their whole decode
    for _ in range(6):
        rate.completed(t, 1, running_before=8, batch=4)
        t += 0.2
    # Five completions 0.2 s apart after the first: 5 per second, not 5 per 7 s.
    assert rate.rate(t - 0.2) == pytest.approx(5.0)
    rate.observe(t, running=2, batch=4)  # a quiet time
    rate.observe(t + 5, running=8, batch=4)  # the next burst: its clock waits for a completion
    rate.completed(t + 11, 1, running_before=8, batch=4)
    # Neither the quiet 5 s nor the burst's first 6 s count: 5 in the first period's 1.2 s.
    assert rate.rate(t + 11) == pytest.approx(5 / 1.2)


def test_the_sequences_to_finish_before_a_request_enters_the_batch() -> None:
    assert must_finish(running=1, ahead=0, cost=1, batch=4) == 0  # room now
    assert must_finish(running=4, ahead=0, cost=1, batch=4) == 1
    assert must_finish(running=6, ahead=3, cost=2, batch=4) == 7  # vLLM's queue, ours, itself
    assert predicted_start(5.0, 0, None) == 5.0
    assert predicted_start(5.0, 3, None) is None  # no estimate: never refused by prediction
    assert predicted_start(5.0, 3, 2.0) == 6.5
    assert retry_after(5.0, 6.5) == "2" and retry_after(5.0, 5.1) == "1" and retry_after(5.0, None) == "1"
    assert over_share("a", {"a": 3, "b": 1}) and not over_share("b", {"a": 3, "b": 1})
    assert not over_share("a", {"a": 2, "b": 2})


def test_a_higher_class_waits_only_behind_its_own_or_higher_in_vllms_queue() -> None:
    by_class = {BATCH: 10, STANDARD: 1, INTERACTIVE: 1}  # a batch of 4, 8 waiting in vLLM's queue
    by_key = {"bulk": 10, "std": 1, "chat": 1}
    assert engine_waiting_before(Waiting("chat", 1, INTERACTIVE, 0), by_class, by_key) == 1
    assert engine_waiting_before(Waiting("std", 1, STANDARD, 0), by_class, by_key) == 2
    assert engine_waiting_before(Waiting("bulk", 1, BATCH, 0), by_class, by_key) == 12
    # Interactive: the batch, then at most the one interactive waiting, then itself.
    assert must_finish(running=12, ahead=0, cost=1, batch=4, engine_before=1) == 2
    assert must_finish(running=12, ahead=0, cost=1, batch=4, engine_before=12) == 9  # batch: all of them
    assert must_finish(running=3, ahead=0, cost=1, batch=4, engine_before=0) == 0  # room now


def test_a_key_holding_little_waits_only_behind_keys_holding_as_little_in_vllms_queue() -> None:
    by_class = {STANDARD: 40}
    flood = {"flood": 39, "quiet": 1}
    # The quiet key holds 1: of the flood's 39 at most 2 were granted while it held 1 or none.
    assert engine_waiting_before(Waiting("quiet", 1, STANDARD, 0), by_class, flood) == 3
    assert engine_waiting_before(Waiting("new", 1, STANDARD, 0), by_class, flood) == 2  # holds none
    assert engine_waiting_before(Waiting("flood", 1, STANDARD, 0), by_class, flood) == 40


async def interactive_after_a_batch_flood(clock: Clock) -> Admission:
    """A batch of 2 and vLLM's queue of 2 full of batch-class sequences, measured at one
    completion per second."""
    admission = Admission(capacity=4, max_waiting=4, max_wait_s=WAIT, clock=clock, batch_size=2,
                          ranking=ClassRanking(batch_seqs=4, key_yield_s=WAIT))
    slots = [await admission.acquire("bulk", level=BATCH) for _ in range(4)]
    for _ in range(5):
        clock.t += 1
        slots.pop(0).release()
        slots.append(await admission.acquire("bulk", level=BATCH))
    return admission


def test_an_interactive_request_is_not_refused_for_lower_classes_waiting_in_vllm() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = await interactive_after_a_batch_flood(clock)
        assert admission.rate.rate(admission._now()) == pytest.approx(1.0) and admission.running == 4
        # Behind the batch's 2 only (1 s for one place), not the 2 batch ones queued in vLLM (3 s);
        # admitted when predicted to start within half its 2.5 s.
        waiting = asyncio.ensure_future(admission.acquire("chat", level=INTERACTIVE, deadline=clock.t + 2.5))
        await asyncio.sleep(0)
        assert not waiting.done() and admission.waiting == 1
        with pytest.raises(Overloaded):  # the same deadline for a batch request: 3 s away
            await admission.acquire("bulk2", level=BATCH, deadline=clock.t + 2.5)
        waiting.cancel()

    asyncio.run(scenario())


def test_a_request_predicted_to_start_past_its_deadline_is_refused_at_arrival() -> None:
    async def scenario() -> None:
        clock, seen = Clock(), []
        admission = Admission(capacity=4, max_waiting=4, max_wait_s=WAIT, clock=clock, batch_size=2,
                              on_deadline=seen.append)
        await primed(admission, clock)
        assert admission.rate.rate(admission._now()) == pytest.approx(1.0)
        with pytest.raises(Overloaded) as info:  # one sequence must finish first: 1 s > 0.5 s
            await admission.acquire("b", deadline=clock.t + 0.5)
        assert info.value.status == 503 and info.value.code == "server_overloaded"
        assert info.value.headers["retry-after"] == "1"
        assert seen == ["arrival"] and admission.queued_for("b") == 0 and admission.running == 2
        with pytest.raises(Overloaded):  # 1 s away is in time, but not within half of 1.9 s
            await admission.acquire("b", deadline=clock.t + 1.9)
        slot = await admission.acquire("b", deadline=clock.t + 2)  # within half: admitted (vLLM's queue)
        assert admission.running == 3
        slot.release()

    asyncio.run(scenario())


def test_a_key_beyond_an_equal_share_is_refused_with_429() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=2, max_waiting=4, max_wait_s=WAIT, clock=clock, batch_size=2)
        await primed(admission, clock)
        other = asyncio.ensure_future(admission.acquire("other"))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited) as info:  # "warm" holds 2 of 3
            await admission.acquire("warm", deadline=clock.t + 0.5)
        assert info.value.status == 429 and info.value.headers["retry-after"] == "2"
        with pytest.raises(Overloaded):  # "other" holds 1 of 3: the server's doing
            await admission.acquire("other", deadline=clock.t + 0.5)
        other.cancel()

    asyncio.run(scenario())


def test_without_an_estimate_nothing_is_refused_by_prediction() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=1, max_waiting=4, max_wait_s=WAIT, clock=clock)
        held = await admission.acquire("a")
        waiter = asyncio.ensure_future(admission.acquire("b", deadline=clock.t + 0.5))
        await asyncio.sleep(0)
        assert admission.waiting == 1  # it waits
        held.release()
        (await waiter).release()

    asyncio.run(scenario())


def test_a_waiter_whose_deadline_passes_is_dropped_never_granted() -> None:
    async def scenario() -> None:
        clock, seen = Clock(), []
        admission = Admission(capacity=1, max_waiting=4, max_wait_s=WAIT, clock=clock, on_deadline=seen.append)
        held = await admission.acquire("a")
        late = asyncio.ensure_future(admission.acquire("b", deadline=clock.t + 5))
        patient = asyncio.ensure_future(admission.acquire("c"))
        await asyncio.sleep(0)
        clock.t += 6  # b's deadline passes before capacity frees up
        held.release()
        with pytest.raises(Overloaded) as info:
            await late
        assert info.value.headers["retry-after"]
        assert seen == ["queued"] and admission.queued_for("b") == 0
        (await patient).release()  # the place went to the request still in time

    asyncio.run(scenario())


def test_a_waiter_is_dropped_by_its_own_timer_at_its_deadline() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        admission = Admission(capacity=1, max_waiting=4, max_wait_s=WAIT, clock=loop.time, on_deadline=seen.append)
        held = await admission.acquire("a")
        with pytest.raises(Overloaded):
            await admission.acquire("b", deadline=loop.time() + 0.05)
        assert seen == ["queued"] and admission.waiting == 0
        held.release()

    asyncio.run(scenario())


def test_earliest_deadline_first_within_a_class_none_last() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=1, max_waiting=8, max_wait_s=WAIT, clock=clock)
        held = await admission.acquire("a")
        order: list[str] = []

        async def take(key: str, deadline: float | None) -> None:
            slot = await admission.acquire(key, deadline=deadline)
            order.append(key)
            slot.release()

        tasks = [asyncio.ensure_future(take("none", None)), asyncio.ensure_future(take("late", clock.t + 20)),
                 asyncio.ensure_future(take("soon", clock.t + 10))]
        await asyncio.sleep(0)
        held.release()
        await asyncio.gather(*tasks)
        assert order == ["soon", "late", "none"]

    asyncio.run(scenario())


def test_a_keys_earliest_deadline_goes_first_among_its_own() -> None:
    waiting = [Waiting("k", 1, 5, since=0.0), Waiting("k", 1, 5, since=1.0, deadline=9.0)]
    ranking = ClassRanking(batch_seqs=4)
    choice = ranking.choose(waiting, Running({}, {}), now=2.0)
    assert choice is not None and choice.waiting is waiting[1]


def test_a_sheddable_request_starts_now_or_is_refused_at_once() -> None:
    async def scenario() -> None:
        admission = Admission(capacity=1, max_waiting=4, max_wait_s=WAIT)
        held = await admission.acquire("a")
        with pytest.raises(Overloaded) as info:
            await admission.acquire("s", sheddable=True)
        assert info.value.headers["retry-after"] == "1" and admission.waiting == 0
        held.release()
        (await admission.acquire("s", sheddable=True)).release()

    asyncio.run(scenario())


def test_engine_side_waiting_counts_as_waiting() -> None:
    async def scenario() -> None:
        seen: list[tuple[int, int]] = []
        admission = Admission(capacity=3, max_waiting=4, max_wait_s=WAIT, batch_size=2,
                              on_change=lambda running, waiting: seen.append((running, waiting)))
        slots = [await admission.acquire("a") for _ in range(3)]
        assert seen[-1] == (2, 1)  # the third waits in vLLM's queue beyond the batch
        for slot in slots:
            slot.release()
        assert seen[-1] == (0, 0)

    asyncio.run(scenario())


class Recording(ClassRanking):
    """The service's ranking, recording when each choice was made."""

    def __init__(self) -> None:
        super().__init__(batch_seqs=8)
        self.granted: list[tuple[float, Waiting]] = []

    def choose(self, ready: Sequence[Waiting], running: Running, now: float) -> Choice | None:
        choice = super().choose(ready, running, now)
        if choice is not None:
            self.granted.append((now, choice.waiting))
        return choice


STEP = st.tuples(st.sampled_from(["acquire", "release", "advance"]), st.sampled_from(["a", "b", "c"]),
                 st.integers(1, 2), st.one_of(st.none(), st.floats(0, 5)), st.floats(0, 3))


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, max_size=40))
def test_no_grant_ever_happens_after_the_waiters_deadline(steps: list[tuple[str, str, int, float | None,
                                                                            float]]) -> None:
    async def scenario() -> None:
        clock, seen = Clock(), []
        ranking = Recording()
        admission = Admission(capacity=3, max_waiting=6, max_wait_s=WAIT, clock=clock, ranking=ranking,
                              batch_size=2, on_deadline=seen.append)
        tasks: list[asyncio.Task[Slot]] = []
        for op, key, cost, within, advance in steps:
            if op == "acquire":
                deadline = None if within is None else clock.t + within
                tasks.append(asyncio.ensure_future(admission.acquire(key, cost, deadline=deadline)))
            elif op == "release":
                done = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is None]
                if done:
                    tasks.remove(done[0])
                    done[0].result().release()
            else:
                clock.t += advance
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(waiting.deadline is None or now < waiting.deadline for now, waiting in ranking.granted)
        assert "granted_late" not in seen

    asyncio.run(scenario())
