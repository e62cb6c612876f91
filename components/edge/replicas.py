"""Which replicas share the rate-limit storage, and this replica's share of a limit while
that storage is down.

Each replica (each API process: BentoML's workers are limiters of their own) announces
itself in Redis while it is up: a member of one sorted set, scored by the time of its last
heartbeat, refreshed every RATE_LIMIT_HEARTBEAT_SECONDS. Each beat drops the members silent
for TTL_HEARTBEATS heartbeats, then reads the live ones back; the limiter keeps the last
membership it read. The set has no TTL of its own: under a `volatile-*` eviction policy
Redis evicts only keys with one, and the beats already bound it.

While the storage is down, each replica limits alone to its share of the last membership
it saw: floor(limit / n), and the remainder one each to as many replicas, picked by rank
and rotated per key, so that the n shares add up to the limit exactly. With Redis frozen
the replicas together admit at most the limit, and a limit below n still gets through on
some replicas rather than on none (a minimum of 1 each would admit n).

RATE_LIMIT_REPLICAS, when set, is the least count assumed (the autoscaler's minimum): a
replica that has not read the membership yet (one started during the outage) assumes it
and takes floor(limit / it), no remainder; unset, such a replica assumes it is alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.storage.backend import RedisStorage, Storage
from components.storage.guard import StorageUnavailable

logger = logging.getLogger(__name__)

HEARTBEATS_KEY = "llm-service:replicas"
# A member is live while it beat within this many heartbeats: one late beat (a loaded event
# loop, a slow call) must not make the others' shares jump.
TTL_HEARTBEATS = 3

_BEAT = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


@dataclass(frozen=True)
class View:
    """The replicas this one counts, and its rank among them (None: assumed, never seen)."""

    count: int
    rank: int | None


def share(limit: int, view: View, identity: str) -> int:
    """This replica's part of `limit`: over the ranks 0..count-1 the parts add up to `limit`."""
    base, extra = divmod(limit, view.count)
    if view.rank is None or not extra:
        return base
    # Rotated per key: the remainder of every key must not land on the same replica.
    first = zlib.crc32(identity.encode()) % view.count
    return base + int((view.rank - first) % view.count < extra)


class Replicas:
    """Alone: in-memory limits are this replica's own, its share is the whole limit."""

    def __init__(self, least: int | None = None) -> None:
        self.least = least or 1
        self.view = View(self.least, None if self.least > 1 else 0)

    def share(self, limit: int, identity: str) -> int:
        return share(limit, self.view, identity)

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisReplicas(Replicas):
    """Beats through the shared storage's guarded call: while it is down (logged there, once)
    the last view stays."""

    def __init__(self, storage: RedisStorage, interval_s: float, least: int | None = None,
                 clock: Callable[[], float] = time.time, replica_id: str | None = None) -> None:
        super().__init__(least)
        self._storage = storage
        self._beat = storage.client.register_script(_BEAT)
        storage.serves("replica heartbeat: the last replica count is kept")
        self.interval_s = interval_s
        self._clock = clock
        self.id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self._stopped = False  # after shutdown the front door still serves kept-alive connections

    def start(self) -> None:
        """Beat in the background from now on (idempotent; called from the serving loop)."""
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._beating())

    async def _beating(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval_s)

    async def beat(self) -> View:
        """Announce this replica, read the live ones; on failure keep the last view."""
        ttl = TTL_HEARTBEATS * self.interval_s
        args: list[str | float] = [repr(self._clock()), self.id, ttl]
        try:
            members: Any = await self._storage.call(lambda: self._beat(keys=[HEARTBEATS_KEY], args=args))
        except StorageUnavailable:
            return self.view
        except Exception:  # noqa: BLE001 - a heartbeat must never end the loop
            logger.exception("replica heartbeat failed; limits keep the last count, %d replica(s)", self.view.count)
            return self.view
        self.learn([m.decode() if isinstance(m, bytes) else str(m) for m in members])
        return self.view

    def learn(self, members: list[str]) -> None:
        ranked = sorted(set(members) | {self.id})
        view = View(max(len(ranked), self.least), ranked.index(self.id))
        if view.count != self.view.count:
            logger.info("rate limits: %d replica(s) share the storage (was %d)", view.count, self.view.count)
        self.view = view

    async def stop(self) -> None:
        """Leave at once: the others' shares grow at their next beat. (The storage's owner
        closes its connections.)"""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._storage.call(lambda: self._storage.client.zrem(HEARTBEATS_KEY, self.id))
        except StorageUnavailable:
            logger.debug("leaving the replica set failed: the storage is unavailable")


def replicas_for(storage: Storage, settings: Any) -> Replicas:
    """A heartbeat in the shared storage (Redis), else alone."""
    if isinstance(storage, RedisStorage):
        return RedisReplicas(storage, settings.heartbeat_s, settings.replicas)
    return Replicas()
