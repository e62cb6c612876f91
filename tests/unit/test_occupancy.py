"""When the engine's places free up (components/serving/occupancy.py), and the prediction
that uses it (deadlines.predict with the headroom)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.priority import BATCH, INTERACTIVE, STANDARD
from components.serving.admission import Admission
from components.serving.occupancy import Held, Occupancy
from components.serving.ranking import Running, Waiting

TOKEN_S = 0.1


def learned(length: int, count: int = 8) -> Occupancy:
    """An occupancy that saw `count` generations of `length` tokens at TOKEN_S each."""
    occupancy = Occupancy()
    for n in range(count):
        occupancy.finished(length, first_token_at=float(n), now=n + (length - 1) * TOKEN_S, batch_full=True)
    return occupancy


def simulated_start(generated: list[int], length: int, batch: int, before: int) -> float:
    """Brute force, one engine step at a time: every sequence in the batch makes a token per
    step and leaves after `length`; the queue (`before` sequences, then ours) takes the
    places in order as they free."""
    running = list(generated) + [None] * (batch - len(generated))  # None: a free place
    queue = before
    for steps in range(10_000):
        for place, made in enumerate(running):
            if made is None or made >= length:
                if queue == 0:
                    return steps * TOKEN_S
                queue -= 1
                running[place] = 0
        running = [made + 1 if made is not None else None for made in running]
    raise AssertionError("never started")


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 80), st.integers(1, 12), st.data())
def test_the_start_is_when_the_places_free_up_for_fixed_lengths(length: int, batch: int, data: st.DataObject) -> None:
    generated = data.draw(st.lists(st.integers(1, length - 1), max_size=batch))
    before = data.draw(st.integers(0, 3 * batch))
    occupancy = learned(length)
    held = [Held(made, length, 0.0) for made in generated]
    start = occupancy.start_in(held, batch, (STANDARD, 0), before, 1)
    assert start == pytest.approx(simulated_start(generated, length, batch, before), abs=1e-6)


def test_an_average_rate_would_miss_clumped_completions() -> None:
    """32 sequences that started together free their places together: a request behind 12
    more waits the whole generation, not 12 / rate (the benchmark's U3 case)."""
    occupancy = learned(64)
    held = [Held(2, 64, 0.0) for _ in range(32)]
    assert occupancy.start_in(held, 32, (STANDARD, 0), 12, 1) == pytest.approx(62 * TOKEN_S)
    average_rate = 32 / (64 * TOKEN_S)
    assert 12 / average_rate < 62 * TOKEN_S / 2


def test_lengths_that_vary_use_the_mean_beyond_what_was_generated() -> None:
    occupancy = Occupancy()
    for length in [10, 20, 30, 100]:
        occupancy.finished(length, first_token_at=0.0, now=(length - 1) * TOKEN_S, batch_full=True)
    assert occupancy.remaining(0, None) == pytest.approx(40)
    assert occupancy.remaining(25, None) == pytest.approx((30 + 100) / 2 - 25)
    assert occupancy.remaining(25, 50) == pytest.approx((30 + 50) / 2 - 25)  # its own cap
    assert occupancy.remaining(200, 500) == pytest.approx(150)  # beyond all seen: half its way
    assert occupancy.remaining(50, 50) == 1.0


def test_no_estimate_before_enough_was_seen() -> None:
    occupancy = Occupancy()
    occupancy.finished(10, first_token_at=0.0, now=1.0, batch_full=False)  # not full: no time per token
    assert occupancy.start_in([Held(3, 10, 0.0)], 1, (STANDARD, 0), 0, 1) is None


def test_vllms_queue_and_headroom_are_read_from_the_priority_numbers() -> None:
    """A flood key fills the batch (32 generating, numbers from 1000 up) and 8 more wait in
    vLLM's queue: a quiet key's request (a lower number) waits behind none of them and, with
    headroom, starts at once; the flood's next waits behind its own 8; an interactive
    request outranks every standard one in the batch."""
    occupancy = learned(64)
    flood = [Held(2, 64, 0.0, STANDARD, 1000 + n) for n in range(32)]
    flood += [Held(0, 64, 1.0 + n, STANDARD, 2000 + n) for n in range(8)]
    quiet, flood_next = (STANDARD, 10), (STANDARD, 3000)
    assert occupancy.start_in(flood, 32, quiet, 0, 1, headroom=4) == 0.0
    assert occupancy.start_in(flood, 32, quiet, 0, 1, headroom=0) == pytest.approx(62 * TOKEN_S)
    assert occupancy.start_in(flood, 32, (INTERACTIVE, 1500), 0, 1, headroom=4) == 0.0
    # Beyond the batch it passes the queued ones that do not outrank, whatever their numbers.
    assert occupancy.start_in(flood, 32, (INTERACTIVE, 5000), 0, 1, headroom=4) == 0.0
    # The flood's next: behind its 8 queued, no headroom (it outranks none of its own).
    assert occupancy.start_in(flood, 32, flood_next, 0, 1, headroom=4) == pytest.approx(62 * TOKEN_S)
    assert occupancy.start_in(flood, 32, flood_next, 24, 1, headroom=4) == pytest.approx(2 * 62 * TOKEN_S + 2 * TOKEN_S)
    # Headroom already taken by generating sequences beyond the batch is not free.
    crowded = flood[:32] + [Held(5, 64, 0.0, STANDARD, 5 + n) for n in range(4)]
    assert occupancy.start_in(crowded, 32, quiet, 0, 1, headroom=4) == pytest.approx(59 * TOKEN_S)


@dataclass
class Made:
    generated: int
    first_token_at: float | None


def test_the_fair_queue_learns_from_what_its_started_requests_made() -> None:
    """Through Admission: each slot tracks its progress; at release the length and the time
    per token are learned, and the next arrival's deadline is judged from them."""
    async def scenario() -> None:
        now = [0.0]
        admission = Admission(4, 10, 30.0, clock=lambda: now[0], batch_size=4)
        for _ in range(2):  # two rounds of four generations of 11 tokens, 0.1 s apart
            slots = [await admission.acquire("k") for _ in range(4)]
            progress = [Made(11, now[0]) for _ in slots]
            for slot, made in zip(slots, progress, strict=True):
                slot.track(made, 11)
            now[0] += 1.0
            for slot in slots:
                slot.release()
        assert admission.forecast.occupancy.token_s == pytest.approx(0.1)
        slots = [await admission.acquire("k") for _ in range(4)]
        for slot in slots:
            slot.track(Made(1, now[0]), 11)
        # Every place frees in 10 tokens (1 s): a deadline 1.5 s away cannot be met at half
        # of it, one 3 s away can.
        with pytest.raises(Exception, match="time-to-first-token"):
            await admission.acquire("k", deadline=now[0] + 1.5)
        assert admission.forecast.start(Waiting("k", 1, STANDARD, now[0]), [], {"k": 4}, 4, {STANDARD: 4},
                                        now[0], (STANDARD, 10**9)) == pytest.approx(now[0] + 1.0)

    asyncio.run(scenario())


def test_a_keys_next_request_counts_all_its_own_in_vllms_queue() -> None:
    """vLLM's queue holds a key's requests in grant order (grants.EngineOrder raises each
    number to the key's last): its next request waits behind every one of them, also when
    the key now holds fewer sequences than when they were granted (a lower raw number)."""
    async def scenario() -> None:
        now = [0.0]
        admission = Admission(8, 10, 30.0, clock=lambda: now[0], batch_size=4)
        for _ in range(2):  # learn: generations of 11 tokens, 0.1 s per token
            slots = [await admission.acquire("k") for _ in range(4)]
            for slot in slots:
                slot.track(Made(11, now[0]), 11)
            now[0] += 1.0
            for slot in slots:
                slot.release()
        slots = [await admission.acquire("k") for _ in range(8)]  # 4 in the batch, 4 in vLLM's queue
        for n, slot in enumerate(slots):
            slot.track(Made(1 if n < 4 else 0, now[0] if n < 4 else None), 11)
        for slot in slots[:2]:  # two end after 11 tokens; two of vLLM's queue take their places
            slot.track(Made(11, now[0] - 1.0), 11)
            slot.release()
        klass, raw = admission.ranking.engine_rank(Waiting("k", 1, STANDARD, now[0]),
                                                   Running({"k": 6}, {STANDARD: 6}), now[0])
        assert raw < slots[-1].engine_priority  # the key holds fewer now than at the last grant
        waiter = type("W", (), {"waiting": Waiting("k", 1, STANDARD, now[0]), "key": "k"})()
        # Behind both queued ones: the first free place (1.0 s) and the next after it, 1.1 s
        # (a pending sequence holds its place for a whole generation of 11 tokens).
        assert admission._predicted_start(waiter, now[0]) == pytest.approx(now[0] + 1.1)

    asyncio.run(scenario())


def test_places_in_the_headroom_free_up_only_for_those_that_outrank() -> None:
    """Four quiet sequences run in the headroom beside a full batch of the flood's: they end
    first, but their places are for the quiet key, not for the flood's next request."""
    occupancy = learned(64)
    flood = [Held(2, 64, 0.0, STANDARD, 1000 + n) for n in range(32)]
    quiet = [Held(60, 64, 1.0, STANDARD, 10 + n) for n in range(4)]
    assert occupancy.start_in(flood + quiet, 32, (STANDARD, 5000), 0, 1, headroom=4) == pytest.approx(62 * TOKEN_S)
    assert occupancy.start_in(flood + quiet, 32, (STANDARD, 20), 0, 1, headroom=4) == pytest.approx(4 * TOKEN_S)


def test_a_batch_request_at_its_class_cap_waits_for_its_own_class() -> None:
    """The batch class holds its cap (24 of 32; PRIORITY_BATCH_SHARE): a batch request waits
    for a batch sequence to end, although an interactive one ends sooner."""
    occupancy = learned(64)
    batch = [Held(2, 64, 0.0, BATCH, 1000 + n) for n in range(24)]
    interactive = [Held(60, 64, 0.0, INTERACTIVE, 10 + n) for n in range(8)]
    rank = (BATCH, 5000)
    assert occupancy.start_in(batch + interactive, 32, rank, 0, 1) == pytest.approx(4 * TOKEN_S)
    assert occupancy.start_in(batch + interactive, 32, rank, 0, 1, cap=24) == pytest.approx(62 * TOKEN_S)
    assert occupancy.start_in(batch[:20] + interactive, 32, rank, 0, 1, cap=24) == 0.0
