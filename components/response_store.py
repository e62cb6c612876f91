"""Where the Responses API keeps responses for `previous_response_id` and `GET
/v1/responses/{id}` (components/responses_api.py): in Redis when the rate limits are
(RATE_LIMIT_STORAGE_URI), shared by every replica, else in this replica's memory, bounded
in bytes. Records expire after RESPONSES_STORE_TTL_SECONDS either way."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from components.errors import Unavailable
from components.ledger import STORAGE_ERRORS

logger = logging.getLogger(__name__)


class MemoryStore:
    """This replica's responses: at most `max_bytes` of JSON, the oldest evicted first."""

    def __init__(self, ttl_s: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def get(self, response_id: str) -> dict[str, Any] | None:
        entry = self._records.get(response_id)
        if entry is None or entry[0] <= self._clock():
            await self.delete(response_id)
            return None
        return json.loads(entry[1])  # type: ignore[no-any-return]

    async def put(self, response_id: str, text: str) -> None:
        """`text`: the record's JSON. One larger than the whole store is not kept (and
        evicts nothing)."""
        await self.delete(response_id)
        if len(text) > self._max_bytes:
            return
        self._records[response_id] = (self._clock() + self._ttl_s, text)
        self._bytes += len(text)
        while self._bytes > self._max_bytes and self._records:
            self._bytes -= len(self._records.popitem(last=False)[1][1])

    async def delete(self, response_id: str) -> None:
        entry = self._records.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def _unavailable(action: str) -> AsyncIterator[None]:
    try:
        yield
    except STORAGE_ERRORS as exc:
        logger.error("response store (redis) could not %s: %s", action, type(exc).__name__)
        raise Unavailable("The response store is unavailable; retry later.") from exc


class RedisStore:
    """Every replica's responses, each key expiring after the TTL (Redis bounds the rest)."""

    def __init__(self, uri: str, timeout_s: float, ttl_s: int) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(uri, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._ttl_s = ttl_s

    async def get(self, response_id: str) -> dict[str, Any] | None:
        async with _unavailable("read"):
            raw = await self._redis.get(_redis_key(response_id))
        return json.loads(raw) if raw is not None else None

    async def put(self, response_id: str, text: str) -> None:
        async with _unavailable("write"):
            await self._redis.set(_redis_key(response_id), text, ex=self._ttl_s)

    async def delete(self, response_id: str) -> None:
        async with _unavailable("delete"):
            await self._redis.delete(_redis_key(response_id))

    async def close(self) -> None:
        await self._redis.aclose()


Store = MemoryStore | RedisStore


def _redis_key(response_id: str) -> str:
    return f"llm:responses:{response_id}"


def store_for(limits: Any, api: Any) -> Store:
    """In Redis when the rate limits are (RATE_LIMIT_STORAGE_URI), else in memory."""
    if limits.storage_uri.startswith("memory://"):
        return MemoryStore(api.responses_ttl_s, api.responses_max_bytes)
    return RedisStore(limits.storage_uri, limits.storage_timeout_s, api.responses_ttl_s)
