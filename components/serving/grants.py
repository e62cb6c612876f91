"""What the fair queue (admission.py) hands a request it starts: its `Slot`, given back
once, and the number vLLM's priority scheduler is to see for it (`EngineOrder`).

The ranking's number (components/core/priority.py) adds a penalty per sequence the key
already holds in the engine, so that between keys the busier one yields in vLLM's own queue
(ENGINE_QUEUE_DEPTH). Among one key's own requests that penalty would reorder them: a
request granted while its key held many sequences would wait behind every later one granted
while it held fewer, without bound (one key at twice the engine's capacity: a time to first
token p99 of 50 s, benchmarks/goodput.py). So `EngineOrder` never gives a request a number
below the last one its key and class got while that key still has sequences in the engine;
vLLM breaks ties by arrival, which is the grant order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from components.serving.ranking import Choice

if TYPE_CHECKING:
    from components.serving.admission import Admission


class Progress(Protocol):
    """How far a started generation has got (components/vllm_adapter/delivery.py)."""

    @property
    def generated(self) -> int:
        """Tokens generated so far, per sequence."""

    @property
    def first_token_at(self) -> float | None:
        """When its first token came, on the fair queue's clock; None: not yet."""


class Slot:
    """`cost` sequences running for one key; `release()` gives them back, once. `klass`:
    the class it started as (aged); `engine_priority`: what vLLM's scheduler is to see;
    `granted_at`: when, on the fair queue's clock; `track()`: how far it has got, which the
    fair queue reads to predict when places free up (occupancy.py)."""

    def __init__(self, admission: Admission, choice: Choice, granted_at: float = 0.0) -> None:
        self._admission: Admission | None = admission
        self.key = choice.waiting.key
        self.cost = choice.waiting.cost
        self.klass = choice.klass
        self.engine_priority = choice.engine_priority
        self.granted_at = granted_at
        self.progress: Progress | None = None
        self.max_tokens: int | None = None

    def track(self, progress: Progress, max_tokens: int | None) -> None:
        self.progress, self.max_tokens = progress, max_tokens

    def release(self) -> None:
        if self._admission is not None:
            admission, self._admission = self._admission, None
            admission._release(self)


class EngineOrder:
    """Keeps each key's requests of one class in grant order in vLLM's queue."""

    def __init__(self) -> None:
        self._floor: dict[tuple[str, int], int] = {}  # (key, class) -> the last number given

    def granted(self, choice: Choice) -> Choice:
        """The choice, with its engine priority raised to its key and class's last if lower."""
        at = (choice.waiting.key, choice.klass)
        priority = max(choice.engine_priority, self._floor.get(at, choice.engine_priority))
        self._floor[at] = priority
        return choice if priority == choice.engine_priority else replace(choice, engine_priority=priority)

    def number(self, key: str, klass: int, priority: int) -> int:
        """The number a request of `key` and `klass` ranked at `priority` would get now."""
        return max(priority, self._floor.get((key, klass), priority))

    def idle(self, key: str) -> None:
        """`key` has nothing in the engine any more: its next request is ranked afresh."""
        for at in [at for at in self._floor if at[0] == key]:
            del self._floor[at]


def per_key_shares(max_num_seqs: int, max_queue_size: int, max_inflight_per_key: int | None,
                   max_queued_per_key: int | None) -> tuple[int, int]:
    """(sequences running, requests queued) one key may hold. By default a key may use the
    whole engine when it is alone (the fair queue serves other keys first as sequences end)
    but only half of the queue, so that another key always finds a place."""
    running = max_inflight_per_key or max_num_seqs
    queued = max_queued_per_key or max(1, max_queue_size // 2)
    return running, queued
