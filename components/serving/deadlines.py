"""When a request would start, for the fair queue (admission.py) to refuse at once a request
that would start past its deadline instead of letting it wait for nothing: the order of
waiting, the refusal, and the engine's average service rate. The prediction itself comes
from when each place frees up (occupancy.py, forecast.py); the rate is its fallback until
the first generations have ended.

The engine's service rate (sequences completed per second) is measured only while its
batch (MAX_NUM_SEQS) is full: then every completion frees a place that a waiting sequence
takes at once, so completions per busy second is the rate at which waiting sequences enter.
Completions while the batch has room say how much work there was, not how fast it goes.
With no estimate yet (a cold start, a light load), nothing is refused by prediction.

Pure: the clock comes in as arguments, so its unit tests never sleep.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping

from components.core.errors import Overloaded, RateLimited
from components.serving.ranking import Waiting

# Fewer completions than this in the window: no estimate (one or two are noise).
MIN_COMPLETIONS = 4
# A request is admitted only if predicted to start within this share of the time left to its
# deadline. The rest is for its first token once in the batch (a prefill beside a full batch:
# 0.9 s of a 4.3 s objective on a 2-core host) and the prediction's error. Under overload the
# queue then holds half an objective's worth of work, still enough to keep the batch full,
# while admitting up to the deadline itself left about half of the admitted requests late
# (docs/benchmarks/goodput-2026-12-07.json, how it was found: docs/benchmarks.md).
START_WITHIN = 0.5


def latest_start(now: float, deadline: float) -> float:
    """The latest predicted start at which a request arriving `now` is admitted."""
    return now + (deadline - now) * START_WITHIN


class ServiceRate:
    """Sequences completed per second of full batch, over the last `window_s` seconds.

    A full period's busy time counts from its first completion: before it, a batch that
    filled at once (a burst after a quiet time) is still in its first requests' prefill and
    decode, and counting that time would read a burst's first seconds as a slow engine
    (the first requests of a flood were refused, benchmarks/goodput.py). A period that
    follows the last within `dip_s` (a completion whose place was refilled a moment
    later) goes on counting at once."""

    def __init__(self, window_s: float = 30.0, min_completions: int = MIN_COMPLETIONS, dip_s: float = 1.0) -> None:
        self.window_s = window_s
        self.dip_s = dip_s
        self.min_completions = min_completions
        self._busy_s = 0.0  # seconds the batch has been full, in total, from each period's first completion
        self._done = 0  # sequences completed while it was full, in total
        self._full_since: float | None = None  # busy time counts from here
        self._ended_at: float | None = None  # when the last full period ended
        # (when, busy seconds then, completions then), one per completion while full.
        self._samples: deque[tuple[float, float, int]] = deque()

    def _busy_until(self, now: float) -> float:
        return self._busy_s + (now - self._full_since if self._full_since is not None else 0.0)

    def observe(self, now: float, running: int, batch: int) -> None:
        """The engine holds `running` sequences now; its batch is full at `batch` or more."""
        full = running >= batch
        if full and self._full_since is None and self._ended_at is not None and now - self._ended_at <= self.dip_s:
            self._full_since = now
        elif not full and self._full_since is not None:
            self._busy_s += now - self._full_since
            self._full_since, self._ended_at = None, now

    def completed(self, now: float, sequences: int, running_before: int, batch: int) -> None:
        """`sequences` finished at `now`; counted only if the batch was full before they did,
        and not the first completion of a full period (it starts the period's clock)."""
        if running_before >= batch:
            if self._full_since is None:
                self._full_since = now
            else:
                self._done += sequences
            self._samples.append((now, self._busy_until(now), self._done))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float | None:
        """Sequences per second, or None while too few completions were seen in the window."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        if len(self._samples) < self.min_completions:
            return None
        # From the oldest completion in the window (its own sequences are before the span).
        _, busy_then, done_then = self._samples[0]
        busy = self._busy_until(now) - busy_then
        done = self._done - done_then
        return done / busy if busy > 0 and done > 0 else None


def must_finish(running: int, ahead: int, cost: int, batch: int, engine_before: int | None = None) -> int:
    """Sequences that must complete before a request of `cost` sequences is in the batch:
    the batch itself, then the sequences waiting in vLLM's own queue that it starts before
    (`engine_before`; None: all of them), then what the fair queue starts before it
    (`ahead`), then itself; each completion makes one place."""
    in_batch = min(running, batch)
    beyond = running - in_batch
    waiting_before = beyond if engine_before is None else min(beyond, engine_before)
    return max(0, in_batch + waiting_before + ahead + cost - batch)


def engine_waiting_before(waiting: Waiting, running_by_class: Mapping[int, int], by_key: Mapping[str, int]) -> int:
    """At most how many of the sequences in the engine `waiting` would wait behind in vLLM's
    queue. vLLM's priority (components/core/priority.py) puts behind it a lower class and,
    within a class, another key's sequences granted while that key held more sequences than
    its own key holds now; so at most those of its class or a higher one, and of each key at
    most one more than its own key holds."""
    same_or_higher = sum(count for klass, count in running_by_class.items() if klass <= waiting.level)
    own = by_key.get(waiting.key, 0)
    fewer_held = sum(min(count, own + 1) for count in by_key.values())
    return min(same_or_higher, fewer_held)


def predicted_start(now: float, sequences: int, rate: float | None) -> float | None:
    """When the request enters the batch at the rate measured; None: no estimate."""
    if sequences <= 0:
        return now
    if rate is None or rate <= 0:
        return None
    return now + sequences / rate


def retry_after(now: float, start: float | None) -> str:
    """Whole seconds until the predicted start, at least 1."""
    return str(max(1, math.ceil(start - now))) if start is not None else "1"


def ranked_before(waiting: Waiting, other: Waiting, by_key: Mapping[str, int]) -> bool:
    """Whether the fair queue would start `other` before `waiting` as things stand: class,
    its key's running sequences, deadline (none: last), age. Aging is left out: an estimate."""
    def order(w: Waiting) -> tuple[int, int, float, float]:
        return (w.level, by_key.get(w.key, 0), w.deadline if w.deadline is not None else math.inf, w.since)
    return order(other) < order(waiting)


def sequences_ahead(waiting: Waiting, queued: Iterable[Waiting], by_key: Mapping[str, int]) -> int:
    return sum(other.cost for other in queued if other is not waiting and ranked_before(waiting, other, by_key))


def predict(waiting: Waiting, queued: Collection[Waiting], by_key: Mapping[str, int], running: int, batch: int,
            rate: float | None, now: float, running_by_class: Mapping[int, int] | None = None) -> float | None:
    """When `waiting` would enter the batch at the `rate` measured, with `queued` in the fair
    queue and `running` sequences in the engine (`running_by_class`: by the class each started
    as; None: every one of them is ahead of it); None: no estimate."""
    engine_before = None if running_by_class is None else engine_waiting_before(waiting, running_by_class, by_key)
    sequences = must_finish(running, sequences_ahead(waiting, queued, by_key), waiting.cost, batch, engine_before)
    return predicted_start(now, sequences, rate)


def over_share(key: str, held: Mapping[str, int]) -> bool:
    """Whether `key` holds more than an equal share of the sequences running and waiting
    (`held`: each key's): then a refusal is that key's doing (429), not the server's (503)."""
    total = sum(held.values())
    return bool(held) and held.get(key, 0) * len(held) > total


def late_refusal(key: str, running: Mapping[str, int], queued: Iterable[Waiting],
                 retry_after: str) -> Overloaded | RateLimited:
    """A request that would start, or has waited, past its deadline: the key's doing (429)
    when it holds more than an equal share of the sequences that run (`running`, by key)
    and wait (`queued`, the request itself left out), else the server's (503)."""
    held = dict(running)
    for other in queued:
        held[other.key] = held.get(other.key, 0) + other.cost
    headers = {"retry-after": retry_after}
    message = "The server cannot start this request within its time-to-first-token objective"
    if over_share(key, held):
        return RateLimited(f"{message} while this key holds more than its share; retry later.",
                           code="concurrency_limit_exceeded", headers=headers)
    return Overloaded(f"{message}; retry later.", headers=headers)
