"""What the service decided about one generation, handed to the bridge with every call
(components/vllm_adapter/vllm_bridge.py): the adapter alone carries it to the places inside
vLLM where each fact is needed. Nothing here imports vLLM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from components.vllm_adapter.delivery import Delivery

# Awaited with the exact prompt lengths and the context length once vLLM has rendered the
# prompts, before any reaches the engine; it may raise a ServiceError, which refuses the request.
Reserve = Callable[[list[int], int], Awaitable[None]]


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class UsageShown:
    """What an OpenAI stream shows of the usage the service always asks vLLM for (to charge
    exactly what was used): the client's own `stream_options`. `final`: the last,
    usage-only chunk; `per_chunk`: usage inside every chunk."""

    final: bool = True
    per_chunk: bool = True


@dataclass(frozen=True)
class EngineCall:
    """One generation's engine call, as the service decided it.

    `cache_salt`: the tenant's prefix-cache partition (its key's `cache_scope`; None: one
    tenant). `priority_class`: the class admission started it as, for the engine's
    scheduler (components/vllm_adapter/engine_scheduler.py; None: never held, never holds).
    `engine_priority`: the number vLLM's priority scheduling sees (lower first).
    `reserve`: the token reservation, made once the prompts are counted; `delivery`: counts
    what the engine produces, for the charge. `client_chose_max_tokens`: False when the
    service set max_tokens (then a long prompt clamps it, as vLLM does, instead of failing).
    `grammars`: the keys of the grammars the guard already built for this request (vLLM's
    validation skips those builds). `deadline`: when the engine must be done (the loop's
    clock); not read yet, the Gate's timer aborts. `usage`: what a stream shows of its
    usage. `on_finished`: told once the engine is done with every engine request of the
    generation; only writing is left."""

    cache_salt: str | None = None
    priority_class: int | None = None
    engine_priority: int = 0
    reserve: Reserve | None = None
    delivery: Delivery | None = None
    client_chose_max_tokens: bool = True
    grammars: frozenset[str] = frozenset()
    deadline: float | None = None
    usage: UsageShown = field(default_factory=UsageShown)
    on_finished: Callable[[], None] = _nothing
