"""Rule: with the shared Redis frozen (SIGSTOP: every call times out), one request waits out at
most one storage timeout in all, however many stores it touches (rate limits, token ledger,
heartbeat, response store): they share one pool and one guarded call. No engine is needed.

Counted server-side: a frozen redis-server still receives what clients send (the kernel
queues it), and runs it once resumed; each call a client made during the freeze is one
command in INFO commandstats, and each of them timed out. No wall-clock threshold.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from components.core.errors import Unavailable
from components.core.settings import ApiSettings, LimitSettings
from components.edge.ledger import TokenLimits
from components.edge.ratelimit import RateLimiter
from components.edge.response_store import Store, store_for, store_uri
from components.storage.backend import RedisStorage, Storages
from tests.integration.conftest import MAIN_KEY, running_redis
from tests.integration.frontdoor import front_door, get_models

HEARTBEATS_KEY = "llm-service:replicas"
# What only a client sends, never a script (commandstats counts a script's own commands
# too): every store's call on a request's path is a script (EVALSHA) but the ledger's read
# (MGET), and a new connection starts with a handshake.
CLIENT_ONLY = ("evalsha", "eval", "script|load", "mget", "hello", "client|setinfo", "select", "auth")


def commands(client: redis.Redis) -> int:
    """The calls clients made so far (this test's own reads are none of these)."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in CLIENT_ONLY)


@contextmanager
def frozen(process: subprocess.Popen[bytes], client: redis.Redis) -> Iterator[list[int]]:
    """SIGSTOP for the block; then, in the list, how many commands clients sent meanwhile."""
    received: list[int] = []
    before = commands(client)
    process.send_signal(signal.SIGSTOP)
    try:
        yield received
    finally:
        process.send_signal(signal.SIGCONT)
    # Each round trip takes the server through one more turn of its event loop: by the third,
    # it has accepted the connections opened meanwhile and read what they sent.
    for _ in range(3):
        client.ping()
    received.append(commands(client) - before)


def wait_for_heartbeat(client: redis.Redis, replicas: int) -> None:
    """Until every replica's first beat is in: it is the only call a replica makes unasked."""
    for _ in range(600):
        if client.zcard(HEARTBEATS_KEY) >= replicas:
            return
        time.sleep(0.05)
    raise AssertionError("no heartbeat within 30 s")


def test_one_request_waits_out_at_most_one_storage_timeout_with_redis_frozen(tmp_path: Path) -> None:
    """Through the front door: the request limit, then the token window (the ledger). Before:
    the ledger's read ran outside the limiter's guard, two timed-out calls per request."""
    env = {"DEFAULT_RATE_LIMIT": "100", "TOKENS_PER_MINUTE_LIMIT": "1000", "RATE_LIMIT_STORAGE_TIMEOUT": "0.2",
           "RATE_LIMIT_HEARTBEAT_SECONDS": "60"}
    with running_redis(tmp_path) as (url, process), front_door((MAIN_KEY,), RATE_LIMIT_STORAGE_URI=url, **env) as door:
        client = redis.Redis.from_url(url)
        assert get_models(door, MAIN_KEY).status_code == 200  # through Redis; starts the heartbeat
        wait_for_heartbeat(client, 1)
        per_request = []
        for _ in range(4):
            with frozen(process, client) as received:
                response = get_models(door, MAIN_KEY)
            assert response.status_code == 200  # limited alone, to this replica's share
            per_request.append(received[0])
        client.close()
    # The first tried the storage (once); the others found it resting after that failure.
    assert per_request[0] == 1, per_request
    assert max(per_request) <= 1, per_request


def test_a_whole_request_path_touches_a_frozen_storage_once_through_one_pool(tmp_path: Path) -> None:
    """What one generation does with the storage, wired as the service wires it (one URI for
    the limits, the ledger, the heartbeat and the store): admit, reserve, settle, store."""
    limits = LimitSettings(  # type: ignore[call-arg]
        DEFAULT_RATE_LIMIT="100", TOKENS_PER_MINUTE_LIMIT="1000", RATE_LIMIT_STORAGE_TIMEOUT="0.2",
        RATE_LIMIT_HEARTBEAT_SECONDS="60",
    )
    tokens = TokenLimits(per_minute=1000)

    async def request(limiter: RateLimiter, store: Store, index: int, frozen: bool) -> None:
        await limiter.admit("key-a", tenant="key-a")
        hold = await limiter.ledger.reserve("key-a", 10, tokens)
        await hold.settle(5)
        try:
            await store.put(f"resp_{index}", "key-a", '{"pad": "x"}')
        except Unavailable:  # the store's outage policy: a 503
            assert frozen

    async def scenario(url: str, process: subprocess.Popen[bytes]) -> tuple[list[int], list[int], int]:
        settings = limits.model_copy(update={"storage_uri": url})
        storages = Storages(settings.storage_timeout_s)
        shared = storages.get(settings.storage_uri)
        assert isinstance(shared, RedisStorage)
        limiter = RateLimiter(settings, shared)
        store = store_for(storages.get(store_uri(settings)), ApiSettings())  # type: ignore[call-arg]
        client = redis.Redis.from_url(url)
        try:
            limiter.replicas.start()
            await asyncio.to_thread(wait_for_heartbeat, client, 1)
            async with asyncio.timeout(30):
                while shared.guard.pending:  # the beat's connection back in the pool
                    await asyncio.sleep(0.01)
            await request(limiter, store, 0, frozen=False)
            # One pool: the calls so far, one after another, reused one connection.
            # (The readiness check's connection and this test's only ever sent PING and CLIENT LIST.)
            clients = [c for c in client.client_list() if c["cmd"] not in ("ping", "client|list")]
            received, timed_out = [], []
            for index in range(1, 4):
                failures = shared.guard.failures
                with frozen(process, client) as counted:
                    await request(limiter, store, index, frozen=True)
                received.append(counted[0])
                timed_out.append(shared.guard.failures - failures)
            return received, timed_out, len(clients)
        finally:
            client.close()
            await limiter.close()
            await storages.close()

    with running_redis(tmp_path) as (url, process):
        received, timed_out, connections = asyncio.run(scenario(url, process))
    assert connections == 1, connections
    assert received[0] == 1 and max(received) <= 1, received  # seen by the server
    assert timed_out == received, (timed_out, received)  # and by the guard
