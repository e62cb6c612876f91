from __future__ import annotations

import asyncio
import json

import pytest

from components.core.errors import Unavailable
from components.core.settings import ApiSettings, LimitSettings
from components.edge.response_store import MemoryStore, Quota, RedisStore, store_for, store_uri
from components.storage.backend import Storage, Storages


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(size: int) -> str:
    return json.dumps({"owner": "a", "context": ["x" * size]})


def test_memory_store_expires_records_after_the_ttl() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(ttl_s=60, quota=Quota.of(10_000), clock=clock)
        await store.put("r1", "a", record(10))
        clock.now += 59
        assert await store.get("r1") == json.loads(record(10))
        clock.now += 2
        assert await store.get("r1") is None

    asyncio.run(scenario())


def test_memory_store_stays_within_its_bytes_oldest_evicted_first() -> None:
    async def scenario() -> None:
        one = len(record(1000))
        store = MemoryStore(ttl_s=60, quota=Quota(max_bytes=3 * one, key_bytes=3 * one, key_records=10))
        for index in range(10):
            await store.put(f"r{index}", "a", record(1000))
        assert [await store.get(f"r{i}") is not None for i in range(10)] == [False] * 7 + [True] * 3
        # Replacing or deleting gives the bytes back: nothing else is evicted.
        await store.put("r9", "a", record(1000))
        await store.delete("r8")
        await store.put("new", "a", record(1000))
        assert [await store.get(f"r{i}") is not None for i in (7, 8, 9)] == [True, False, True]

    asyncio.run(scenario())


def test_a_record_larger_than_the_store_is_not_kept_and_evicts_nothing() -> None:
    async def scenario() -> None:
        store = MemoryStore(ttl_s=60, quota=Quota.of(2000, key_bytes=2000))
        await store.put("small", "a", record(10))
        assert not await store.put("big", "a", record(5000))
        assert await store.get("big") is None
        assert await store.get("small") is not None

    asyncio.run(scenario())


def test_redis_store_unreachable_is_a_503_not_a_500() -> None:
    async def scenario() -> None:
        storage = Storage.from_uri("redis://127.0.0.1:1/0", timeout_s=0.5)  # port 1: nothing
        store = store_for(storage, ApiSettings())  # type: ignore[call-arg]
        assert isinstance(store, RedisStore)
        try:
            for call in (store.get("r"), store.put("r", "a", record(1)), store.delete("r")):
                with pytest.raises(Unavailable) as info:
                    await call
                assert info.value.status == 503
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_the_store_goes_where_responses_store_uri_says_else_with_the_limits() -> None:
    redis, memory, api = "redis://127.0.0.1:1/0", "memory://", ApiSettings()  # type: ignore[call-arg]

    async def scenario() -> None:
        for limits_uri, own_uri, kind in [(redis, None, RedisStore), (redis, memory, MemoryStore),
                                          (memory, redis, RedisStore), (memory, None, MemoryStore)]:
            env = {"RATE_LIMIT_STORAGE_URI": limits_uri, **({"RESPONSES_STORE_URI": own_uri} if own_uri else {})}
            storages = Storages(timeout_s=0.5)
            store = store_for(storages.get(store_uri(LimitSettings(**env))), api)  # type: ignore[arg-type]
            assert isinstance(store, kind)
            await storages.close()

    asyncio.run(scenario())


def test_the_store_shares_the_limits_pool_and_guard_when_their_uris_are_the_same() -> None:
    storages = Storages(timeout_s=0.5)
    limits = LimitSettings(RATE_LIMIT_STORAGE_URI="redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    other = LimitSettings(RATE_LIMIT_STORAGE_URI="redis://127.0.0.1:1/0",  # type: ignore[call-arg]
                          RESPONSES_STORE_URI="redis://127.0.0.1:2/0")
    assert storages.get(store_uri(limits)) is storages.get(limits.storage_uri)
    assert storages.get(store_uri(other)) is not storages.get(other.storage_uri)


def test_keys_off_one_tenant_may_use_the_whole_store_by_default() -> None:
    from types import SimpleNamespace

    memory = Storage.from_uri("memory://", timeout_s=1)
    api = SimpleNamespace(responses_max_bytes=1 << 20, responses_key_max_bytes=None, responses_key_max_records=None,
                          responses_ttl_s=60)
    assert store_for(memory, api, one_tenant=True)._quota.key_bytes == 1 << 20  # type: ignore[union-attr]
    assert store_for(memory, api)._quota.key_bytes == (1 << 20) // 8  # type: ignore[union-attr]
