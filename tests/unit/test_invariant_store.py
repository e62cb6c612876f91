"""The response store's per-owner bound, as a property (components/edge/response_store.py).

Rule: every shared store has a per-owner bound. A key over its quota (bytes or records)
loses its own oldest records; the global cap evicts from the key holding the most, so a
key holding at most its fair share (the cap over the keys holding records) never loses a
record to another key's put. The same checker runs against the Redis store
(tests/integration/test_invariant_store_redis.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from components.edge.response_store import MemoryStore, Quota

QUOTA = Quota(max_bytes=4000, key_bytes=2500, key_records=4)
OWNERS = ("a", "b", "c")

# ("put", owner, padding) or ("delete", the n-th put so far)
Op = tuple[str, int, int]
ops_strategy = st.lists(
    st.one_of(
        # Sizes that fill the store in a few puts (2600: over a key's quota), and any size.
        st.tuples(st.just("put"), st.integers(0, len(OWNERS) - 1),
                  st.one_of(st.sampled_from([20, 600, 1200, 2600]), st.integers(10, 1400))),
        st.tuples(st.just("delete"), st.integers(0, 60), st.just(0)),
    ),
    min_size=1, max_size=40,
)


def text(owner: str, padding: int) -> str:
    return json.dumps({"owner": owner, "pad": "x" * padding})


async def check_invariants(store: Any, quota: Quota, ops: list[Op]) -> None:
    """Apply `ops` to an empty `store`, checking the bound after every step."""
    put: list[tuple[str, str, int]] = []  # (id, owner, size) in put order
    deleted: set[str] = set()
    refused: set[str] = set()  # larger than a key's quota: never kept

    async def present() -> dict[str, bool]:
        return {rid: await store.get(rid) is not None for rid, _, _ in put}

    def usage(alive: dict[str, bool]) -> dict[str, int]:
        used: dict[str, int] = {}
        for rid, owner, size in put:
            if alive[rid]:
                used[owner] = used.get(owner, 0) + size
        return used

    alive = await present()
    for step, (kind, arg, padding) in enumerate(ops):
        before = usage(alive)
        if kind == "delete":
            if arg >= len(put):
                continue
            rid = put[arg][0]
            await store.delete(rid)
            deleted.add(rid)
            alive = await present()
            assert not alive[rid]
            assert all(alive[r] == was for r, was in (await present()).items() if r != rid)
            continue
        owner, rid = OWNERS[arg], f"r{step}"
        record = text(owner, padding)
        stored = await store.put(rid, owner, record)
        put.append((rid, owner, len(record)))
        if len(record) > quota.key_bytes:
            refused.add(rid)
        previous, alive = alive, await present()
        alive.setdefault(rid, False)
        assert stored == alive[rid]
        after = usage(alive)
        # The bounds: per key (bytes and records) and the whole store.
        assert all(used <= quota.key_bytes for used in after.values()), after
        counts = [sum(1 for r, o, _ in put if o == who and alive[r]) for who in OWNERS]
        assert max(counts) <= quota.key_records
        assert sum(after.values()) <= quota.max_bytes
        # A put never evicts another key's record, whatever the number of keys.
        for other in before:
            lost = [r for r, o, _ in put if o == other and previous.get(r) and not alive[r]]
            assert other == owner or not lost, (other, lost)
        # Nothing is evicted when everything fits.
        own = before.get(owner, 0) + len(record)
        own_count = sum(1 for r, o, _ in put if o == owner and previous.get(r)) + 1
        if own <= quota.key_bytes and own_count <= quota.key_records and \
                sum(before.values()) + len(record) <= quota.max_bytes:
            assert all(alive[r] for r, was in previous.items() if was) and alive[rid]
        # Within a key, the oldest go first: no kept record is older than an evicted one.
        for who in OWNERS:
            mine = [alive[r] for r, o, _ in put if o == who and r not in deleted and r not in refused]
            assert mine == sorted(mine), (who, mine)


def run(ops: list[Op], make: Callable[[], Awaitable[Any]]) -> None:
    async def scenario() -> None:
        await check_invariants(await make(), QUOTA, ops)

    asyncio.run(scenario())


@settings(derandomize=True, max_examples=300, deadline=None)
@given(ops_strategy)
def test_memory_store_holds_every_owner_to_its_bound(ops: list[Op]) -> None:
    async def make() -> MemoryStore:
        return MemoryStore(ttl_s=60, quota=QUOTA)

    run(ops, make)


def test_a_flood_by_one_key_evicts_only_its_own_records() -> None:
    """The attack of issue #24: one key stores record after record; another key's stays."""
    async def scenario() -> None:
        store = MemoryStore(ttl_s=60, quota=QUOTA)
        assert await store.put("victim", "b", text("b", 500))
        for index in range(50):
            await store.put(f"flood{index}", "a", text("a", 1000))
        assert await store.get("victim") is not None
        kept = [index for index in range(50) if await store.get(f"flood{index}") is not None]
        assert kept == [48, 49]  # its own newest, within its 2500 bytes

    asyncio.run(scenario())


def test_the_global_cap_evicts_the_putting_keys_own_records_never_anothers() -> None:
    async def scenario() -> None:
        # The quotas add up to more than the store: 3 x 2500 > 6000.
        store = MemoryStore(ttl_s=60, quota=Quota(max_bytes=6000, key_bytes=2500, key_records=4))
        for index in range(2):
            await store.put(f"a{index}", "a", text("a", 1100))  # a: 2 x ~1114
        await store.put("b0", "b", text("b", 1400))
        await store.put("c0", "c", text("c", 1400))
        await store.put("c1", "c", text("c", 1000))  # c: the most; the store is now over 6000
        assert [await store.get(r) is not None for r in ("a0", "a1", "b0", "c0", "c1")] == [True] * 3 + [False, True]

    asyncio.run(scenario())


def test_a_key_keeps_at_most_its_count_of_records() -> None:
    async def scenario() -> None:
        store = MemoryStore(ttl_s=60, quota=QUOTA)
        for index in range(6):
            await store.put(f"r{index}", "a", text("a", 10))
        assert [await store.get(f"r{i}") is not None for i in range(6)] == [False] * 2 + [True] * 4

    asyncio.run(scenario())


def test_default_quotas_derive_from_the_store() -> None:
    quota = Quota.of(max_bytes=64 * 1024 * 1024)
    assert (quota.key_bytes, quota.key_records) == (8 * 1024 * 1024, 8192)
    assert Quota.of(max_bytes=4096, key_bytes=10_000) == Quota(4096, 4096, 4)  # at most the store


def test_a_full_store_of_keys_within_quota_loses_nothing_to_another_key() -> None:
    """More keys than the quota's share: every key within its quota, the store full. A new
    key's put must not evict any of theirs (before: the largest holder lost its oldest)."""
    async def scenario() -> None:
        store = MemoryStore(ttl_s=60, quota=Quota(max_bytes=6000, key_bytes=2500, key_records=4))
        for owner in ("a", "b", "c"):
            assert await store.put(f"{owner}0", owner, text(owner, 1900))
        assert not await store.put("d0", "d", text("d", 900))  # over the cap: not kept
        assert [await store.get(f"{owner}0") is not None for owner in "abcd"] == [True, True, True, False]

    asyncio.run(scenario())
