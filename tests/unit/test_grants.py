"""vLLM's queue keeps one key's requests of a class in grant order (components/serving/grants.py)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.priority import STANDARD
from components.serving.admission import Admission, Slot
from components.serving.grants import EngineOrder
from components.serving.ranking import Choice, Waiting


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 10**6), st.booleans()), max_size=40))
def test_a_keys_numbers_never_go_down_while_it_has_sequences_in_the_engine(
        steps: list[tuple[str, int, bool]]) -> None:
    order, given_to = EngineOrder(), {"a": [], "b": []}
    for key, formula, idle_first in steps:
        if idle_first:
            order.idle(key)
            given_to[key] = []
        number = order.granted(Choice(Waiting(key, 1, STANDARD, 0.0), STANDARD, formula)).engine_priority
        assert number >= formula
        assert all(number >= earlier for earlier in given_to[key])
        given_to[key].append(number)


def test_one_busy_keys_later_request_never_goes_before_its_earlier_one_in_vllms_queue() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(capacity=8, max_waiting=8, max_wait_s=30, clock=clock, batch_size=2)
        slots = [await admission.acquire("one") for _ in range(6)]  # granted at ranks 0..5
        clock.t += 1
        for slot in slots[1:5]:
            slot.release()  # the key now holds 2: its next one's own rank is lower
        later: Slot = await admission.acquire("one")
        assert later.engine_priority >= slots[5].engine_priority
        # Another key holding nothing still goes before the busy one.
        other = await admission.acquire("other")
        assert other.engine_priority < later.engine_priority
        # Once the key holds nothing, its next request is ranked afresh.
        for slot in (slots[0], slots[5], later):
            slot.release()
        fresh = await admission.acquire("one")
        assert fresh.engine_priority < slots[5].engine_priority

    asyncio.run(scenario())
