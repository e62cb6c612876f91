"""Rule: while the shared rate-limit storage is down, the replicas together admit at most a
key's limit, with no hand-set replica count (RATE_LIMIT_REPLICAS unset).

Two limiters in one process are two replicas here: each has its own storage connections,
its own local windows and its own heartbeat; they share nothing but a real redis-server,
which is then frozen (SIGSTOP: every call times out). No engine is needed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from components.core.errors import RateLimited
from components.core.settings import LimitSettings
from components.edge.ratelimit import RateLimiter
from components.edge.replicas import RedisReplicas, View
from components.storage.backend import RedisStorage
from tests.integration.conftest import running_redis

LIMIT = 10


def limiter(url: str) -> RateLimiter:
    settings = LimitSettings(  # type: ignore[call-arg]
        RATE_LIMIT_STORAGE_URI=url, DEFAULT_RATE_LIMIT=str(LIMIT), RATE_LIMIT_STORAGE_TIMEOUT="0.2",
        RATE_LIMIT_HEARTBEAT_SECONDS="0.05",
    )
    assert settings.replicas is None  # nothing hand-set: the replicas find each other
    return RateLimiter(settings)


async def until(predicate: Callable[[], bool], timeout: float = 20) -> bool:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    return True


def test_two_replicas_with_redis_frozen_admit_the_limit_once_in_total(tmp_path: Path) -> None:
    async def scenario(url: str, redis_process) -> dict[str, int]:  # type: ignore[no-untyped-def]
        a, b = limiter(url), limiter(url)
        try:
            a.replicas.start()
            b.replicas.start()
            # Each learns the other from its own heartbeat.
            await until(lambda: a.replicas.view.count == 2 and b.replicas.view.count == 2)
            redis_process.send_signal(signal.SIGSTOP)
            try:
                admitted = {"a": 0, "b": 0}
                for i in range(3 * LIMIT):
                    name, replica = ("a", a) if i % 2 == 0 else ("b", b)
                    try:
                        await replica.admit("key-tenant")
                        admitted[name] += 1
                    except RateLimited:
                        pass
                # The heartbeats failed meanwhile: the last known count stays.
                assert a.replicas.view.count == 2 and b.replicas.view.count == 2
            finally:
                redis_process.send_signal(signal.SIGCONT)
            return admitted
        finally:
            await asyncio.gather(a.close(), b.close())

    with running_redis(tmp_path) as (url, redis_process):
        admitted = asyncio.run(scenario(url, redis_process))
    # Before: each replica applied the whole limit, 20 admitted in all.
    assert sum(admitted.values()) == LIMIT, admitted
    assert admitted == {"a": LIMIT // 2, "b": LIMIT // 2}, admitted


def test_heartbeats_count_the_live_replicas_and_forget_the_silent(tmp_path: Path) -> None:
    """Membership by heartbeat with an injected clock: a replica silent for its TTL drops
    out of everyone's count, a replica that stops leaves at once."""
    now = [1000.0]
    storages: list[RedisStorage] = []

    def replica(url: str, name: str) -> RedisReplicas:
        storages.append(RedisStorage(url, timeout_s=1))  # each replica its own connections
        return RedisReplicas(storages[-1], interval_s=5, clock=lambda: now[0], replica_id=name)

    async def scenario(url: str) -> None:
        a, b, c = replica(url, "a"), replica(url, "b"), replica(url, "c")
        try:
            assert (await a.beat()) == View(1, 0)
            await b.beat()
            await c.beat()
            assert b.view == View(2, 1)  # b beat before c did
            assert (await a.beat()) == View(3, 0) and (await b.beat()) == View(3, 1) and c.view == View(3, 2)
            now[0] += 3 * 5 + 1  # c stays silent past its TTL (three heartbeats)
            await b.beat()
            assert (await a.beat()) == View(2, 0)
            await b.stop()  # a graceful stop leaves at once
            assert (await a.beat()) == View(1, 0)
        finally:
            await asyncio.gather(a.stop(), c.stop())
            await asyncio.gather(*(storage.close() for storage in storages))

    with running_redis(tmp_path) as (url, _):
        asyncio.run(scenario(url))
