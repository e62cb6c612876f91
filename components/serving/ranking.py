"""Which waiting request starts next: the ranking policy of the fair queue (admission.py).

The queue counts and waits; after every change it offers the ranking each key's waiting
request of the earliest deadline (else its oldest) that the engine and the key's share have
room for, and the ranking picks the one to start (or none), the class it starts as and the
priority vLLM's own queue is to see. A ranking is pure: everything it reads comes in as
arguments, so another one plugs into the same queue.

`ClassRanking`, the service's: class first (interactive, standard, batch; a request waiting
`aging_s` while its key has nothing running rises one class, so none starves), then its
key's running sequences (fewest first), then deadline (earliest first, none last), then age
(oldest first). The batch class may hold at most `batch_seqs` sequences, so a request of a
higher class finds room at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from components.core.priority import (
    aged_level,
    engine_priority,
    engine_rank_ms,
    engine_step_ms,
    is_batch,
)
from components.core.settings import LimitSettings


@dataclass(frozen=True)
class Waiting:
    """One waiting request, as a ranking sees it."""

    key: str
    cost: int  # engine sequences: n x prompts
    level: int  # its priority class as admitted, lower first
    since: float  # when it joined the queue, in seconds since the queue opened
    deadline: float | None = None  # when it must have started, on the same scale; None: never


@dataclass(frozen=True)
class Running:
    """The sequences in the engine now, by key and by the class each request started as."""

    by_key: Mapping[str, int]
    by_class: Mapping[int, int]


@dataclass(frozen=True)
class Choice:
    waiting: Waiting
    klass: int  # the class it starts as (aged); the engine scheduler's class tag
    engine_priority: int  # what vLLM's scheduler sees (components/core/priority.py)


def earlier_deadline(waiting: Waiting, than: Waiting) -> bool:
    """Whether `waiting` must start before `than` (a deadline is earlier than none)."""
    return waiting.deadline is not None and (than.deadline is None or waiting.deadline < than.deadline)


class Ranking(Protocol):
    def refusal(self, cost: int, level: int) -> str | None:
        """Why a request of `cost` sequences at `level` could never start under this
        ranking (it would wait for nothing), else None."""

    def engine_rank(self, waiting: Waiting, running: Running, now: float) -> tuple[int, int]:
        """(the class it would start as, the priority number vLLM would see) were it started
        now: where it would stand in vLLM's queue and its scheduler's headroom rule."""

    def class_cap(self, klass: int) -> int | None:
        """The most sequences the requests of `klass`'s group may hold in the engine; None: no cap."""

    def choose(self, ready: Sequence[Waiting], running: Running, now: float) -> Choice | None:
        """The request of `ready` to start now, or None to start none of them. `ready`: each
        key's first waiting request (earliest deadline, else oldest) that fits the engine and
        its key's share, in the order the keys joined the queue; `now`: seconds since the
        queue opened."""


def batch_seqs(batch_size: int, share: float) -> int:
    """The sequences the batch class may hold: its share (PRIORITY_BATCH_SHARE) of the
    engine's batch (MAX_NUM_SEQS; not of vLLM's queue beyond it), at least one."""
    return max(1, int(batch_size * share))


class ClassRanking:
    def __init__(self, batch_seqs: int, aging_s: float = 10.0, key_yield_s: float = 30.0) -> None:
        # The rest of the engine's batch stays free for the classes above the batch class,
        # so their requests start at once, not after a batch one.
        self.batch_seqs = batch_seqs
        self.aging_s = aging_s
        self.key_yield_s = key_yield_s
        # vLLM's queue never ages: the number it sees ages as this queue does, and a busy
        # key's request yields `key_yield_s` (the queue's bounded wait) per sequence it runs.
        self._class_ms = engine_step_ms(aging_s)
        self._rank_ms = engine_rank_ms(key_yield_s)

    @classmethod
    def from_settings(cls, limits: LimitSettings, batch_size: int) -> ClassRanking:
        return cls(batch_seqs(batch_size, limits.priority_batch_share), limits.priority_aging_s,
                   limits.queue_timeout_s)

    def refusal(self, cost: int, level: int) -> str | None:
        if is_batch(level) and cost > self.batch_seqs and not self.aging_s:
            # It could only start as a batch request, which it never fits as, nor ages out of.
            return (f"The request asks for {cost} sequences (n x prompts); the batch class runs at most "
                    f"{self.batch_seqs} at once.")
        return None

    def starts_as(self, waiting: Waiting, running: Running, now: float) -> int:
        """Its class, raised one step per `aging_s` waited while its key has nothing
        running. Only such a key ages: aging is against starvation, and a key whose
        sequences run is not starving; were it to age, a busy key's old queued requests
        would outrank another key's fresh ones and defeat the fairness between keys."""
        if running.by_key.get(waiting.key, 0):
            return waiting.level
        return aged_level(waiting.level, now - waiting.since, self.aging_s)

    def choose(self, ready: Sequence[Waiting], running: Running, now: float) -> Choice | None:
        batch_running = sum(seqs for klass, seqs in running.by_class.items() if is_batch(klass))
        best: tuple[tuple[int, int, float, float], Waiting, int] | None = None
        for waiting in ready:
            klass = self.starts_as(waiting, running, now)
            if is_batch(klass) and batch_running + waiting.cost > self.batch_seqs:
                continue
            deadline = waiting.deadline if waiting.deadline is not None else math.inf
            order = (klass, running.by_key.get(waiting.key, 0), deadline, waiting.since)
            if best is None or order < best[0]:
                best = (order, waiting, klass)
        if best is None:
            return None
        _, chosen, klass = best
        return Choice(chosen, klass, self._engine_number(chosen, running))

    def engine_rank(self, waiting: Waiting, running: Running, now: float) -> tuple[int, int]:
        return self.starts_as(waiting, running, now), self._engine_number(waiting, running)

    def class_cap(self, klass: int) -> int | None:
        return self.batch_seqs if is_batch(klass) else None

    def _engine_number(self, waiting: Waiting, running: Running) -> int:
        # n x prompts engine requests share one priority: rank it as its last one.
        rank = running.by_key.get(waiting.key, 0) + waiting.cost - 1
        return engine_priority(int(waiting.since * 1000), waiting.level, rank, self._class_ms, self._rank_ms)
