"""Priority classes, defined once for every layer: their names and numbers, how a waiting
request ages, the number vLLM's scheduler is given, and the tag that carries a request's
class to the engine's own scheduler.

The keys file gives a key its class by name (components/edge/keys_file.py); a request's
level is a number at or above its key's (a request may lower its own priority, never raise
it); the fair queue ranks by that level (components/serving/ranking.py); the engine's
scheduler holds lower classes back for one step (components/vllm_adapter/engine_scheduler.py).
Lower numbers run first, as in vLLM's priority scheduling."""

from __future__ import annotations

from typing import Literal

ClassName = Literal["interactive", "standard", "batch"]

INTERACTIVE, STANDARD, BATCH = 0, 5, 10
CLASSES: dict[ClassName, int] = {"interactive": INTERACTIVE, "standard": STANDARD, "batch": BATCH}
# A key's class when the keys file names none, and every request's without keys.
DEFAULT_CLASS: ClassName = "standard"
# One class apart: what one aging step raises a waiting request by.
CLASS_STEP = STANDARD - INTERACTIVE

# The key of SamplingParams.extra_args under which the service gives each engine request its
# class as admitted; a client's own value under it is always replaced (vllm_hooks.py).
CLASS_ARG = "service_priority_class"
# The entries of vLLM's `--additional-config` that the engine's scheduler reads: the headroom
# beyond MAX_NUM_SEQS for requests that outrank a running one, and the first-step rule.
HEADROOM_CONFIG = "service_headroom"
FIRST_STEP_CONFIG = "service_first_step_alone"

# vLLM carries a priority as a 64-bit integer: each term of engine_priority() is bounded.
_MOST_STEPS = 10_000
_MOST_MS = 10**9


def request_level(declared: int | None, floor: int) -> int:
    """A request's level: the priority it declared, but never ahead of its key's class."""
    return max(int(declared or 0), floor)


def is_batch(level: int) -> bool:
    """Whether a request at `level` counts against the batch class's share of the engine."""
    return level >= BATCH


def aged_level(level: int, waited_s: float, aging_s: float) -> int:
    """`level` raised one class per `aging_s` waited (0: never), up to interactive: however
    busy the classes above, a waiting request's turn comes."""
    if not aging_s:
        return level
    return max(INTERACTIVE, level - CLASS_STEP * int(waited_s / aging_s))


def engine_step_ms(aging_s: float) -> int:
    """The virtual milliseconds of vLLM's priority per unit of level: one class is one aging
    step; never aging, the classes lie too far apart to ever cross."""
    return int(aging_s * 1000 / CLASS_STEP) if aging_s else _MOST_MS


def engine_rank_ms(key_yield_s: float) -> int:
    """The virtual milliseconds of vLLM's priority per sequence a request's key already runs."""
    return min(int(key_yield_s * 1000), _MOST_MS)


def engine_priority(arrived_ms: int, level: int, rank: int, class_ms: int, rank_ms: int) -> int:
    """The priority vLLM's scheduler sees (lower first) for the requests that wait in its
    own queue (ENGINE_QUEUE_DEPTH): a virtual time, in ms, of when the request arrived, plus
    `class_ms` per unit of its level (interactive 0, standard 5, batch 10) and `rank_ms` per
    sequence its key already had in the engine (`rank`). vLLM's queue never ages; this way
    a batch request there waits behind standard ones that arrived up to one aging step
    (CLASS_STEP `class_ms`, PRIORITY_AGING_SECONDS) after it and no longer, and a busy key's
    request behind another key's that arrived up to `rank_ms` (the fair queue's bounded
    wait, QUEUE_TIMEOUT_SECONDS) per sequence later. Below 2**63: vLLM carries an int64."""
    return (max(0, arrived_ms) + min(max(level, 0), _MOST_STEPS) * min(class_ms, _MOST_MS)
            + min(max(rank, 0), _MOST_STEPS) * min(rank_ms, _MOST_MS))
