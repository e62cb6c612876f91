"""The response store on a real redis-server (no engine needed).

- The per-owner bound holds in Redis as in memory: the property of
  tests/unit/test_invariant_store.py, against the Lua-scripted store every replica shares.
- The limits and the token ledger are never evictable: on a Redis configured as the shipped
  manifests configure the limits' one (deploy/k8s/redis.yaml), with a small `maxmemory`
  and the response store sharing it (RESPONSES_STORE_URI unset), a hostile flood of stored
  responses leaves every rate-limit window and ledger bucket as it was."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import yaml
from hypothesis import given, settings

from components.core.errors import RateLimited
from components.core.settings import ApiSettings, LimitSettings
from components.edge.ledger import TokenLimits
from components.edge.ratelimit import RateLimiter
from components.edge.response_store import RedisStore, store_for, store_uri
from components.storage.backend import RedisStorage, Storages
from tests.integration.conftest import running_redis
from tests.unit.test_invariant_store import QUOTA, Op, check_invariants, ops_strategy

ROOT = Path(__file__).resolve().parents[2]


def shipped_redis_args(name: str) -> list[str]:
    """The redis-server arguments of the Deployment `name` in deploy/k8s/redis.yaml."""
    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/redis.yaml").read_text()):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return [str(arg) for arg in container["args"]]
    raise AssertionError(f"no Deployment {name} in deploy/k8s/redis.yaml")


def shipped_policy(name: str) -> str:
    args = shipped_redis_args(name)
    return args[args.index("--maxmemory-policy") + 1]


@contextmanager
def redis_server(workdir: Path, *extra: str) -> Iterator[str]:
    with running_redis(workdir, *extra) as (url, _):
        yield url


@pytest.fixture(scope="module")
def store_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("store-redis"), "--maxmemory-policy", shipped_policy("llm-redis-store")) \
            as url:
        yield url


@settings(derandomize=True, max_examples=60, deadline=None)
@given(ops_strategy)
def test_redis_store_holds_every_owner_to_its_bound(store_redis: str, ops: list[Op]) -> None:
    async def scenario() -> None:
        storage = RedisStorage(store_redis, timeout_s=5)
        store = RedisStore(storage, ttl_s=60, quota=QUOTA)
        try:
            await store.clear()
            await check_invariants(store, QUOTA, ops)
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_redis_store_expires_records_and_gives_their_bytes_back(store_redis: str) -> None:
    async def scenario() -> None:
        storage = RedisStorage(store_redis, timeout_s=5)
        store = RedisStore(storage, ttl_s=1, quota=QUOTA)
        try:
            await store.clear()
            assert await store.put("old", "a", json.dumps({"pad": "x" * 2000}))
            await asyncio.sleep(1.2)
            assert await store.get("old") is None
            # Its 2000 bytes no longer count against its key: both of these fit.
            assert await store.put("new1", "a", json.dumps({"pad": "x" * 1200}))
            assert await store.put("new2", "a", json.dumps({"pad": "x" * 1200}))
            assert await store.get("new1") is not None
        finally:
            await storage.close()

    asyncio.run(scenario())


def test_a_store_flood_leaves_the_limits_and_the_ledger_intact(tmp_path: Path) -> None:
    """Issue #24 rule 5: the limits' Redis evicted its shortest-lived keys first (the windows)."""
    policy = shipped_policy("llm-redis")
    with redis_server(tmp_path, "--maxmemory", "8mb", "--maxmemory-policy", policy) as url:
        limits = LimitSettings(RATE_LIMIT_STORAGE_URI=url, DEFAULT_RATE_LIMIT="5",  # type: ignore[call-arg]
                               TOKENS_PER_MINUTE_LIMIT="1000")
        # The store shares the limits' Redis (RESPONSES_STORE_URI unset): the worst case.
        api = ApiSettings(RESPONSES_STORE_MAX_BYTES=str(2 * 1024 * 1024))  # type: ignore[call-arg]

        async def scenario() -> None:
            storages = Storages(limits.storage_timeout_s)  # as the service wires them: one pool
            limiter = RateLimiter(limits, storages.get(limits.storage_uri))
            store = store_for(storages.get(store_uri(limits)), api)
            try:
                for _ in range(3):
                    await limiter.admit("victim", tenant="victim")
                hold = await limiter.ledger.reserve("victim", 300, TokenLimits(per_minute=1000))
                assert hold is not None
                # Three times the instance's memory in stored responses, 64 owners.
                padding = "x" * 10_000
                for index in range(2400):
                    owner = f"flood{index % 64}"
                    await store.put(f"resp_{index}", owner, json.dumps({"owner": owner, "pad": padding}))
                client = redis.Redis.from_url(url)
                assert client.info("stats")["evicted_keys"] == 0
                client.close()
                # The window still counts the victim's 3 requests: 2 more, then a 429.
                for _ in range(2):
                    await limiter.admit("victim", tenant="victim")
                with pytest.raises(RateLimited):
                    await limiter.admit("victim", tenant="victim")
                used = await limiter.ledger.used("victim", TokenLimits(per_minute=1000))
                assert used["minute"][0] == 300
            finally:
                await limiter.close()
                await storages.close()

        asyncio.run(scenario())
