"""components/serving/ranking.py: the service's ranking as pure logic (which waiting request
starts next), as properties over generated queues, and a ranking of another kind plugged
into the fair queue."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.core.errors import InvalidRequest
from components.core.priority import (
    BATCH,
    INTERACTIVE,
    STANDARD,
    engine_priority,
    engine_rank_ms,
    engine_step_ms,
    is_batch,
)
from components.serving.admission import Admission, Slot
from components.serving.ranking import Choice, ClassRanking, Running, Waiting, batch_seqs

KEYS = [f"key-{i}" for i in range(6)]


@st.composite
def situations(draw: st.DrawFn) -> tuple[ClassRanking, list[Waiting], Running, float]:
    """A ranking, the ready requests (one per key), the sequences running, and now."""
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=len(KEYS), unique=True))
    now = draw(st.floats(0, 1000))
    ready = [Waiting(key, draw(st.integers(1, 4)), draw(st.sampled_from([INTERACTIVE, STANDARD, 7, BATCH, 12])),
                     draw(st.floats(0, now))) for key in keys]
    by_key = {key: n for key in KEYS if (n := draw(st.integers(0, 3)))}
    by_class = {klass: n for klass in (INTERACTIVE, STANDARD, BATCH) if (n := draw(st.integers(0, 6)))}
    ranking = ClassRanking(draw(st.integers(1, 8)), draw(st.sampled_from([0.0, 1.0, 10.0, 100.0])),
                           draw(st.sampled_from([1.0, 30.0])))
    return ranking, ready, Running(by_key, by_class), now


def held_by_the_batch_share(ranking: ClassRanking, waiting: Waiting, running: Running, now: float) -> bool:
    batch_running = sum(n for klass, n in running.by_class.items() if is_batch(klass))
    return is_batch(ranking.starts_as(waiting, running, now)) and batch_running + waiting.cost > ranking.batch_seqs


@given(situations())
def test_it_starts_one_of_the_ready_unless_the_batch_share_holds_them_all(
        situation: tuple[ClassRanking, list[Waiting], Running, float]) -> None:
    ranking, ready, running, now = situation
    choice = ranking.choose(ready, running, now)
    startable = [w for w in ready if not held_by_the_batch_share(ranking, w, running, now)]
    assert (choice is None) == (not startable)
    if choice is not None:
        assert choice.waiting in startable and choice.klass == ranking.starts_as(choice.waiting, running, now)


@given(situations())
def test_a_higher_class_never_waits_behind_a_lower_one_but_by_aging_or_the_batch_share(
        situation: tuple[ClassRanking, list[Waiting], Running, float]) -> None:
    ranking, ready, running, now = situation
    choice = ranking.choose(ready, running, now)
    if choice is None:
        return
    chosen = choice.waiting
    for other in ready:
        if other is chosen or held_by_the_batch_share(ranking, other, running, now):
            continue
        # Among those that may start, the chosen one's class (as it starts) is the highest...
        assert choice.klass <= ranking.starts_as(other, running, now)
        if other.level < chosen.level:
            # ...so a request of a higher class is passed over only by one that has aged:
            # its key ran nothing and it waited at least one aging step.
            assert choice.klass < chosen.level and not running.by_key.get(chosen.key)
            assert ranking.aging_s and now - chosen.since >= ranking.aging_s


@given(situations())
def test_within_a_class_the_key_running_fewest_goes_first_then_the_oldest(
        situation: tuple[ClassRanking, list[Waiting], Running, float]) -> None:
    ranking, ready, running, now = situation
    choice = ranking.choose(ready, running, now)
    if choice is None:
        return
    mine = running.by_key.get(choice.waiting.key, 0)
    for other in ready:
        if (held_by_the_batch_share(ranking, other, running, now)
                or ranking.starts_as(other, running, now) != choice.klass):
            continue
        theirs = running.by_key.get(other.key, 0)
        assert mine < theirs or (mine == theirs and choice.waiting.since <= other.since)


@given(situations())
def test_the_batch_class_never_holds_more_than_its_share(
        situation: tuple[ClassRanking, list[Waiting], Running, float]) -> None:
    ranking, ready, running, now = situation
    choice = ranking.choose(ready, running, now)
    if choice is not None and is_batch(choice.klass):
        batch_running = sum(n for klass, n in running.by_class.items() if is_batch(klass))
        assert batch_running + choice.waiting.cost <= ranking.batch_seqs


@given(situations())
def test_vllm_sees_the_declared_class_its_arrival_and_its_keys_rank(
        situation: tuple[ClassRanking, list[Waiting], Running, float]) -> None:
    ranking, ready, running, now = situation
    choice = ranking.choose(ready, running, now)
    if choice is None:
        return
    chosen = choice.waiting
    rank = running.by_key.get(chosen.key, 0) + chosen.cost - 1  # n x prompts: as their last
    assert choice.engine_priority == engine_priority(int(chosen.since * 1000), chosen.level, rank,
                                                     engine_step_ms(ranking.aging_s),
                                                     engine_rank_ms(ranking.key_yield_s))


def test_only_a_key_with_nothing_running_ages() -> None:
    ranking = ClassRanking(batch_seqs=8, aging_s=10)
    old_batch = Waiting("idle", 1, BATCH, since=0)
    assert ranking.starts_as(old_batch, Running({}, {}), now=25) == INTERACTIVE  # two steps
    assert ranking.starts_as(old_batch, Running({"idle": 1}, {}), now=25) == BATCH
    assert ranking.starts_as(old_batch, Running({}, {}), now=9.9) == BATCH


def test_the_batch_share_is_of_the_engines_batch_and_a_hopeless_request_is_refused() -> None:
    assert batch_seqs(4, 0.5) == 2 and batch_seqs(4, 0.01) == 1
    never_ages = ClassRanking(batch_seqs=4, aging_s=0)
    assert never_ages.refusal(5, BATCH) is not None
    assert never_ages.refusal(4, BATCH) is None and never_ages.refusal(5, STANDARD) is None
    assert ClassRanking(batch_seqs=4, aging_s=10).refusal(5, BATCH) is None  # it ages out of the batch class


class NewestFirst:
    """Another ranking: the newest request first, and nothing of more than two sequences."""

    def refusal(self, cost: int, level: int) -> str | None:
        return "too big" if cost > 2 else None

    def choose(self, ready: Sequence[Waiting], running: Running, now: float) -> Choice | None:
        newest = max(ready, key=lambda waiting: waiting.since)
        return Choice(newest, newest.level, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_fair_queue_takes_another_ranking() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=4, max_waiting=8, max_wait_s=10, clock=clock, ranking=NewestFirst())
        with pytest.raises(InvalidRequest) as info:
            await admission.acquire("a", cost=3)
        assert "too big" in info.value.message
        running = [await admission.acquire("x", cost=2) for _ in range(2)]
        order: list[str] = []

        async def wait(key: str) -> None:
            slot = await admission.acquire(key)
            order.append(key)
            slot.release()

        waiters = []
        for key in ("a", "b", "c"):
            waiters.append(asyncio.ensure_future(wait(key)))
            await asyncio.sleep(0)
            clock.now += 1
        for slot in running:
            slot.release()
        await asyncio.gather(*waiters)
        assert order == ["c", "b", "a"]
        assert admission.running == 0 and admission.running_by_class == {}

    asyncio.run(scenario())



@dataclass(frozen=True)
class Op:
    kind: str  # acquire, release (the index-th granted slot) or wait (the clock moves on)
    key: str = KEYS[0]
    cost: int = 1
    level: int = STANDARD
    index: int = 0
    seconds: float = 0.0


operations = st.lists(st.one_of(
    st.builds(Op, st.just("acquire"), st.sampled_from(KEYS[:3]), st.integers(1, 3),
              st.sampled_from([INTERACTIVE, STANDARD, BATCH])),
    st.builds(Op, st.just("release"), index=st.integers(0, 20)),
    st.builds(Op, st.just("wait"), seconds=st.floats(0, 30)),
), max_size=30)


@given(operations, st.integers(1, 4), st.sampled_from([0.0, 10.0]))
def test_the_queue_with_the_class_ranking_keeps_its_bounds_and_leaves_no_room_idle(
        ops: list[Op], batch: int, aging_s: float) -> None:
    """Whatever arrives and leaves: never more running than the engine, a key's share or the
    batch class's share; no request waits that the ranking would start; all comes back."""

    async def scenario() -> None:
        clock = Clock()
        ranking = ClassRanking(batch, aging_s, 10)
        admission = Admission(capacity=4, max_waiting=6, max_wait_s=1000, running_per_key=3, queued_per_key=3,
                              clock=clock, ranking=ranking)
        tasks: list[asyncio.Task[Slot]] = []
        for op in ops:
            granted = [task.result() for task in tasks if task.done() and not task.exception()]
            if op.kind == "acquire":
                tasks.append(asyncio.ensure_future(admission.acquire(op.key, op.cost, level=op.level)))
            elif op.kind == "release" and granted:
                granted[op.index % len(granted)].release()
            elif op.kind == "wait":
                clock.now += op.seconds
                # Time alone starts nothing; the next arrival or release does, and sees the
                # requests that aged in the meantime.
                admission._dispatch()
            await asyncio.sleep(0)
            by_class = admission.running_by_class
            assert admission.running == sum(by_class.values()) <= admission.capacity
            assert sum(n for klass, n in by_class.items() if is_batch(klass)) <= batch
            assert all(admission.running_for(key) <= admission.running_per_key for key in KEYS)
            assert admission.waiting <= admission.max_waiting
            heads = {waiter.key: waiter for waiter in reversed(admission._queue)}
            ready = [waiter.waiting for waiter in heads.values() if admission._fits(waiter)]
            running = Running({key: admission.running_for(key) for key in KEYS}, by_class)
            assert not ready or ranking.choose(ready, running, admission._now()) is None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and not task.exception():
                task.result().release()  # a second release gives nothing back twice
        assert (admission.running, admission.waiting, admission.running_by_class) == (0, 0, {})

    asyncio.run(scenario())
