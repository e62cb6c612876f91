"""When the engine's places free up, from what each running sequence has left to generate,
for the fair queue's start prediction (deadlines.py).

An average service rate (deadlines.ServiceRate) predicts a start `k / rate` away, which holds
only while completions are spread out. They often are not: requests that started together
and ask for about as many tokens end together, and the next place may free up one whole
generation later (one key at three times capacity, 64 tokens each: requests admitted as
starting within 2.5 s waited 3.0 s on average in vLLM's queue and 11 s at p99,
docs/benchmarks/goodput-2026-12-07.json). Here each running sequence frees its place after
the tokens it is expected still to generate: the mean of recent completions' lengths beyond
what it has already generated, capped by its own `max_tokens`, times the measured time per
token. The places are then handed, earliest first, to the sequences that start before the
request, each holding its place for a typical generation.

Pure: times and counts come in as arguments, so its unit tests never sleep.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

from components.core.priority import is_batch

# Completions remembered for the length distribution, and what the per-token time needs.
LENGTHS_KEPT = 256
MIN_SAMPLES = 4
# Weight of the newest completion in the time per token (an exponential moving average).
SMOOTHING = 0.1


@dataclass(frozen=True)
class Held:
    """One sequence in the engine as the prediction sees it: tokens generated so far (none:
    it may still wait in vLLM's queue), its cap (None: the model's length), when it was
    granted, and the class and priority number vLLM's scheduler sees for it."""

    generated: int
    max_tokens: int | None
    granted_at: float
    klass: int = 0
    priority: int = 0


class Occupancy:
    """Lengths of recent generations and the engine's time per token at a full batch."""

    def __init__(self, kept: int = LENGTHS_KEPT, min_samples: int = MIN_SAMPLES) -> None:
        self.min_samples = min_samples
        self._recent: deque[int] = deque(maxlen=kept)
        self._sorted: list[int] = []
        self._sums: list[int] = [0]
        self.token_s: float | None = None  # seconds per generated token, per sequence

    def finished(self, tokens: int, first_token_at: float | None, now: float, batch_full: bool) -> None:
        """A sequence ended at `now` after `tokens` tokens, its first at `first_token_at`.
        The time per token is learned only while the batch was full, where it matters."""
        if tokens <= 0:
            return
        if len(self._recent) == self._recent.maxlen:
            self._sorted.pop(bisect.bisect_left(self._sorted, self._recent[0]))
        self._recent.append(tokens)
        bisect.insort(self._sorted, tokens)
        self._sums = [0, *accumulate(self._sorted)]
        if batch_full and first_token_at is not None and tokens >= 2 and now > first_token_at:
            sample = (now - first_token_at) / (tokens - 1)
            self.token_s = sample if self.token_s is None else self.token_s + SMOOTHING * (sample - self.token_s)

    @property
    def ready(self) -> bool:
        return self.token_s is not None and len(self._sorted) >= self.min_samples

    def remaining(self, generated: int, max_tokens: int | None) -> float:
        """Tokens a sequence that has generated `generated` is expected still to generate:
        the mean length beyond `generated` of recent completions longer than that, each
        capped at `max_tokens`; at least one."""
        cap = max_tokens if max_tokens is not None else self._sorted[-1] if self._sorted else generated + 1
        if cap <= generated:
            return 1.0
        longer = bisect.bisect_right(self._sorted, generated)
        count = len(self._sorted) - longer
        if count == 0:  # longer than every recent one: half the way to its cap
            return max(1.0, (cap - generated) / 2)
        within = bisect.bisect_right(self._sorted, cap)
        total = self._sums[within] - self._sums[longer] + cap * (len(self._sorted) - max(within, longer))
        return max(1.0, total / count - generated)

    def start_in(self, held: Iterable[Held], batch: int, rank: tuple[int, int], ahead: int, cost: int,
                 headroom: int = 0, cap: int | None = None) -> float | None:
        """Seconds until a request of `cost` sequences, of `rank` (its class and vLLM priority
        number), enters the batch behind the sequences of vLLM's queue of a lower number and
        `ahead` more of the fair queue (each then holds its place for a typical generation);
        None: no estimate yet. The generating sequences hold places; of those that have not
        generated yet, the earliest granted take the places left and the rest wait in vLLM's
        queue. Outranking one in the batch, it may also take the `headroom`'s free places
        (components/vllm_adapter/engine_scheduler.py), passing those of vLLM's queue that do
        not outrank; else the places that those in the headroom (the best ranked beyond the
        batch) free are not for it. `cap`: a batch-class request also waits for its class to
        hold fewer than that many sequences (PRIORITY_BATCH_SHARE)."""
        if not self.ready:
            return None
        generating = [h for h in held if h.generated > 0]
        pending = sorted((h for h in held if h.generated <= 0), key=lambda h: h.granted_at)
        room = max(0, batch - len(generating))
        placed, queued = generating + pending[:room], pending[room:]
        token_s = self.token_s or 0.0
        beyond = max(0, len(placed) - batch)  # in the headroom: the best ranked ones
        def ends(sequences: list[Held]) -> list[float]:
            return [self.remaining(h.generated, h.max_tokens) * token_s for h in sequences]
        last = max(((h.klass, h.priority) for h in placed), default=None)
        if last is not None and rank < last:
            # Beyond the batch, vLLM's queue lets it pass those that do not outrank.
            frees = ends(placed) + [0.0] * max(0, headroom - beyond)  # the free headroom: now
            before = ahead + sum(1 for h in queued if h.priority <= rank[1] and (h.klass, h.priority) < last)
        else:  # the headroom's places free up for those that outrank, not for it
            frees = ends(sorted(placed, key=lambda h: (h.klass, h.priority))[beyond:])
            before = ahead + sum(1 for h in queued if h.priority <= rank[1])
        frees += [0.0] * max(0, batch - len(placed))
        start = self._after(frees, before, cost)
        if cap is not None:  # and its class's own places, freed only by its class
            mine, waiting = [h for h in placed if is_batch(h.klass)], [h for h in queued if is_batch(h.klass)]
            frees = ends(mine) + [0.0] * max(0, cap - len(mine) - len(waiting))
            start = max(start, self._after(frees, ahead + len(waiting), cost))
        return start

    def _after(self, frees: list[float], before: int, cost: int) -> float:
        """When `cost` places are its own, `before` sequences taking the first ones freed."""
        heapq.heapify(frees)
        hold = self.remaining(0, None) * (self.token_s or 0.0)
        for _ in range(before):
            if frees:
                heapq.heappush(frees, heapq.heappop(frees) + hold)
        start = 0.0
        for _ in range(max(1, cost)):
            start = heapq.heappop(frees) if frees else start
        return start
