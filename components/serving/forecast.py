"""What the fair queue (admission.py) knows of time: the sequences it started and how far
each has got, the engine's measured service rate, and from those when a waiting request
would enter the engine's batch. The rules themselves are pure and live in deadlines.py
(the rate, the order of waiting) and occupancy.py (when places free up)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from components.serving import deadlines
from components.serving.deadlines import ServiceRate
from components.serving.grants import Slot
from components.serving.occupancy import Held, Occupancy
from components.serving.ranking import Waiting


class Forecast:
    def __init__(self, batch: int, rate: ServiceRate | None = None, epoch: float = 0.0, headroom: int = 0) -> None:
        """`batch`: the engine's batch (MAX_NUM_SEQS); `epoch`: the fair queue's time zero
        on its clock (a started request's first token comes on the clock's own scale);
        `headroom`: the engine's places beyond the batch for requests that outrank a
        running one (PRIORITY_HEADROOM)."""
        self.batch = batch
        self.headroom = headroom
        self.rate = rate or ServiceRate()
        self.occupancy = Occupancy()
        self._epoch = epoch
        self._slots: dict[Slot, None] = {}  # the started ones, in grant order

    def started(self, slot: Slot) -> None:
        self._slots[slot] = None

    def ended(self, slot: Slot, now: float, running: int) -> None:
        """`slot` gave its sequences back at `now`; `running`: sequences in the engine before."""
        self._slots.pop(slot, None)
        self.rate.completed(now, slot.cost, running, self.batch)
        if slot.progress is not None:
            first = slot.progress.first_token_at
            self.occupancy.finished(slot.progress.generated, None if first is None else first - self._epoch, now,
                                    running >= self.batch)

    def observe(self, now: float, running: int) -> None:
        self.rate.observe(now, running, self.batch)

    def start(self, waiting: Waiting, queued: Collection[Waiting], by_key: Mapping[str, int], running: int,
              by_class: Mapping[int, int], now: float, rank: tuple[int, int] | None = None,
              cap: int | None = None) -> float | None:
        """When `waiting` would enter the batch: from what the sequences in the engine have
        left to generate once that is known (occupancy.py; `rank`: the class and vLLM
        priority number it would get, the ranking's; `cap`: its class's, the ranking's), else at
        the rate measured; None: unknown."""
        if rank is not None and self.occupancy.ready and self._slots:
            held = [Held(slot.progress.generated if slot.progress else 0, slot.max_tokens, slot.granted_at,
                         slot.klass, slot.engine_priority) for slot in self._slots for _ in range(slot.cost)]
            start = self.occupancy.start_in(held, self.batch, rank, deadlines.sequences_ahead(waiting, queued, by_key),
                                            waiting.cost, self.headroom, cap)
            if start is not None:
                return now + start
        return deadlines.predict(waiting, queued, by_key, running, self.batch, self.rate.rate(now), now, by_class)
