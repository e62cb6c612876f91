"""Where shared state lives, chosen once from its URI: this replica's memory, or a Redis that
every replica shares, reached through one connection pool and one guarded call.

The rate limits (through the `limits` library, handed the same pool), the token ledger, the
replica heartbeat and the response store all take a `Storage` and never read its URI: one
pool and one guard per distinct URI (`Storages`), so a Redis outage is one outage, with one
log line and one rest after a failure, for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as redis
from limits.aio import storage as limits_storage

from components.storage.guard import Guard

T = TypeVar("T")


class Storage:
    """This replica's memory: nothing shared and nothing to guard. Its calls are in-process
    and cannot hang; a time limit would only measure the event loop's lag (under load, memory
    calls that timed out once let requests past a limit)."""

    shared = False  # every replica sees the same state
    kind = "memory"

    @staticmethod
    def from_uri(uri: str, timeout_s: float, on_error: Callable[[], None] | None = None) -> Storage:
        """memory:// or redis:// (rediss://, redis+unix://), as settings validated it."""
        if uri.startswith("memory://"):
            return Storage()
        return RedisStorage(uri, timeout_s, on_error)

    def serves(self, policy: str) -> None:
        """A user's outage policy, for the outage's log line (memory has no outage)."""

    def limits_storage(self) -> limits_storage.Storage:
        """The `limits` library's storage on this one: its own memory here."""
        return limits_storage.MemoryStorage()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await operation()

    async def close(self) -> None:
        return None


class RedisStorage(Storage):
    """One redis-py client over one connection pool; every call through one `Guard`."""

    shared = True
    kind = "redis"

    def __init__(self, uri: str, timeout_s: float, on_error: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        # Socket timeouts too, for a call the guard's time limit did not cut (it always should).
        pool = redis.ConnectionPool.from_url(redis_py_uri(uri), socket_timeout=timeout_s,
                                             socket_connect_timeout=timeout_s)
        self.client = redis.Redis.from_pool(pool)  # the client owns the pool: closing it closes both
        self.guard = Guard(where(uri), timeout_s, on_error, clock=clock)
        self._limits: limits_storage.RedisStorage | None = None

    def serves(self, policy: str) -> None:
        self.guard.serves(policy)

    def limits_storage(self) -> limits_storage.Storage:
        """`limits`' Redis storage on this same pool (its documented `connection_pool`
        option); its calls go through `call` like every other."""
        if self._limits is None:
            # `limits` types its options as scalars; the pool is passed on to redis-py as is.
            options: dict[str, Any] = {"connection_pool": self.client.connection_pool}
            self._limits = limits_storage.RedisStorage("async+" + self.uri, wrap_exceptions=True,
                                                       implementation="redispy", **options)
        return self._limits

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await self.guard.call(operation)

    async def close(self) -> None:
        await self.client.aclose()


class Storages:
    """One storage per distinct URI: the users of one Redis share its pool and its guard."""

    def __init__(self, timeout_s: float, on_error: Callable[[], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self._on_error = on_error
        self._by_uri: dict[str, Storage] = {}

    def get(self, uri: str) -> Storage:
        if uri not in self._by_uri:
            self._by_uri[uri] = Storage.from_uri(uri, self.timeout_s, self._on_error)
        return self._by_uri[uri]

    async def close(self) -> None:
        for storage in self._by_uri.values():
            await storage.close()


def redis_py_uri(uri: str) -> str:
    """`limits` spells a Unix socket redis+unix://, redis-py unix://."""
    return "unix://" + uri.removeprefix("redis+unix://") if uri.startswith("redis+unix://") else uri


def where(uri: str) -> str:
    """The URI for a log line: scheme, host, port and database, never the password."""
    parts = urlsplit(uri)
    if not parts.hostname:
        return f"{parts.scheme}://{parts.path}"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
