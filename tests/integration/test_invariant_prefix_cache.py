"""Tenants share no prefix cache (issue #24, rule 3), on the real engine.

The engine's prefix cache is partitioned by a salt the service sets from the key (its
`cache_group`, or its id): another key's prefix is never a hit, neither in
`usage.prompt_tokens_details.cached_tokens` nor in the engine's own prefix-cache counters
(`vllm:prefix_cache_hits`, counted by the scheduler, so no host's speed enters the check),
while a key's own repeated prefix still is. A client's own `cache_salt` chooses nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.server import Server, wait_until
from tests.integration.conftest import MAIN_KEY, TOKENS_KEY

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "


def prefix() -> str:
    """A fresh system prompt of about 1,400 tokens: its first block is new to the cache."""
    return f"Reference {uuid.uuid4().hex}. " + SENTENCE * 100


def ask(server: Server, key: str, system: str, **extra: Any) -> int:
    """The prompt tokens the prefix cache served, as the usage reports them."""
    answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                        headers={"authorization": f"Bearer {key}"},
                        json={"messages": [{"role": "system", "content": system},
                                           {"role": "user", "content": "Say yes."}],
                              "max_tokens": 1, "temperature": 0, **extra})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 1000
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def engine_cache(server: Server) -> tuple[float, float]:
    """(prompt tokens the engine looked up in its prefix cache, tokens it found there)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    totals = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.removesuffix("_total") in totals:
                totals[sample.name.removesuffix("_total")] += sample.value
    return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]


def engine_hits_for(server: Server, key: str, system: str) -> tuple[int, float]:
    """(cached_tokens in the usage, the engine's prefix-cache hits during this one request).

    The engine records a step's stats after handing out its outputs, so wait until its
    lookup counter shows this request's prompt before reading the hits."""
    queries, hits = engine_cache(server)
    cached = ask(server, key, system)
    assert wait_until(lambda: engine_cache(server)[0] >= queries + 1000, 30)
    return cached, engine_cache(server)[1] - hits


def test_another_keys_prefix_is_never_a_hit_and_a_keys_own_still_is(server: Server) -> None:
    for _ in range(3):
        shared = prefix()
        assert engine_hits_for(server, TOKENS_KEY, shared)[0] == 0  # key B sends it first
        # Key A sends B's prefix: no hit, in the usage nor in the engine's own count.
        assert engine_hits_for(server, MAIN_KEY, shared) == (0, 0)
        # Key B again: its own prefix still hits, in both.
        cached, hits = engine_hits_for(server, TOKENS_KEY, shared)
        assert cached > 1000 and hits >= cached


def test_a_clients_own_cache_salt_chooses_nothing(server: Server) -> None:
    shared = prefix()
    assert ask(server, TOKENS_KEY, shared, cache_salt="pick-me") == 0
    # The same client salt from another key: still another partition.
    assert ask(server, MAIN_KEY, shared, cache_salt="pick-me") == 0
    # And the owner's next request, with another salt or none, still hits its own.
    assert ask(server, TOKENS_KEY, shared, cache_salt="other") > 1000
