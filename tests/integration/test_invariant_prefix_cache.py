"""Tenants share no prefix cache (issue #24, rule 3), on the real engine.

The engine's prefix cache is partitioned by a salt the service sets from the key (its
`cache_group`, or its id): another key's prefix is never a hit, neither in
`usage.prompt_tokens_details.cached_tokens` nor in the time to first token, while a key's
own repeated prefix still is. A client's own `cache_salt` chooses nothing.
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

import httpx

from harness.server import Server, wait_until
from tests.integration.conftest import MAIN_KEY, TOKENS_KEY

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "


def prefix() -> str:
    """A fresh system prompt of about 1,400 tokens: its first block is new to the cache."""
    return f"Reference {uuid.uuid4().hex}. " + SENTENCE * 100


def ask(server: Server, key: str, system: str, **extra: Any) -> tuple[int, float]:
    """(cached prompt tokens, the server's own time to first token in ms)."""
    request_id = f"cache-{uuid.uuid4().hex[:12]}"
    answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=300,
                        headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
                        json={"messages": [{"role": "system", "content": system},
                                           {"role": "user", "content": "Say yes."}],
                              "max_tokens": 1, "temperature": 0, **extra})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 1000
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    line = f'"request_id": "{request_id}"'
    assert wait_until(lambda: line in server.log(), 30)
    logged = next(entry for entry in server.log().splitlines() if line in entry)
    ttft_ms = float(logged.split('"ttft_ms": ', 1)[1].split(",", 1)[0])
    return int(cached), ttft_ms


def test_another_keys_prefix_is_never_a_hit_and_a_keys_own_still_is(server: Server) -> None:
    other, own, fresh = [], [], []
    for round_ in range(5):
        shared = prefix()
        assert ask(server, TOKENS_KEY, shared)[0] == 0  # key B sends it first
        # Key A: B's prefix, and a prefix nobody sent (the baseline), in alternating order so
        # that neither always follows B's full prefill.
        pair = [(shared, other), (prefix(), fresh)]
        for system, times in pair if round_ % 2 == 0 else pair[::-1]:
            cached, ttft = ask(server, MAIN_KEY, system)
            assert cached == 0
            times.append(ttft)
        cached, _ = ask(server, TOKENS_KEY, shared)  # key B again: its own prefix still hits
        assert cached > 1000
        own.append(cached)
    # Side by side on one server: another key's prefix gives no faster first token.
    assert statistics.median(other) >= 0.9 * statistics.median(fresh), (other, fresh)


def test_a_clients_own_cache_salt_chooses_nothing(server: Server) -> None:
    shared = prefix()
    assert ask(server, TOKENS_KEY, shared, cache_salt="pick-me")[0] == 0
    # The same client salt from another key: still another partition.
    assert ask(server, MAIN_KEY, shared, cache_salt="pick-me")[0] == 0
    # And the owner's next request, with another salt or none, still hits its own.
    assert ask(server, TOKENS_KEY, shared, cache_salt="other")[0] > 1000
