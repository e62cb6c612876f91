"""Where the Responses API keeps responses for `previous_response_id` and `GET
/v1/responses/{id}` (components/api/responses_api.py): in Redis (RESPONSES_STORE_URI, else the
rate limits' RATE_LIMIT_STORAGE_URI), shared by every replica, else in this replica's
memory. Records expire after RESPONSES_STORE_TTL_SECONDS either way.

Every owner (API key) has a bound, in both stores, so that no key can push another's
responses out (issue #24, rule 5):
- a key holds at most `key_bytes` of JSON and `key_records` records; a put over either
  evicts that key's own oldest records, never another key's (OpenAI keeps every response,
  so keeping the newest and dropping the key's oldest is the least surprising answer: a
  refusal would fail the request that had already been answered);
- the whole store holds at most `max_bytes`; when a put crosses it, the putting key pays:
  its own oldest records go, the new one last (then the put reports it was not kept). So
  no put ever evicts another key's record, whatever the number of keys: a full store of
  many tenants refuses new records until some expire, it never drops a tenant's records for
  another's. One key fills at most its quota (an eighth by default) of the store.
In Redis one Lua script applies both rules atomically for every replica; Redis' own
`maxmemory` eviction must never be the bound (docs/deployment.md, "Redis"). Redis is reached
through the shared storage's guarded call (components/storage/); while it fails, or rests
after a failure, the store answers 503."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from components.core.errors import Unavailable
from components.core.settings import LimitSettings
from components.storage.backend import RedisStorage, Storage
from components.storage.guard import StorageUnavailable

# A key's default share of the store, and the smallest average record its count allows
# (a stored response with its conversation is over 1 KiB of JSON).
KEY_SHARE = 8
MIN_RECORD_BYTES = 1024


@dataclass(frozen=True)
class Quota:
    max_bytes: int  # the whole store
    key_bytes: int  # one owner
    key_records: int  # one owner

    @classmethod
    def of(cls, max_bytes: int, key_bytes: int | None = None, key_records: int | None = None) -> Quota:
        """Unset: a key may use an eighth of the store, a record per KiB of that."""
        own = min(key_bytes or max_bytes // KEY_SHARE, max_bytes)
        return cls(max_bytes, own, key_records or max(1, own // MIN_RECORD_BYTES))


@dataclass
class _Record:
    owner: str
    expires: float
    text: str


class MemoryStore:
    """This replica's responses, each owner within its quota and all within `max_bytes`."""

    def __init__(self, ttl_s: int, quota: Quota, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._quota = quota
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()  # oldest first: expiry order
        self._by_owner: dict[str, OrderedDict[str, None]] = {}  # oldest first
        self._bytes: dict[str, int] = {}
        self._total = 0

    async def get(self, response_id: str) -> dict[str, Any] | None:
        record = self._records.get(response_id)
        if record is None or record.expires <= self._clock():
            await self.delete(response_id)
            return None
        return json.loads(record.text)  # type: ignore[no-any-return]

    async def put(self, response_id: str, owner: str, text: str) -> bool:
        """`text`: the record's JSON (ASCII). Whether it is kept: one larger than its
        owner's quota is not (and evicts nothing)."""
        await self.delete(response_id)
        now = self._clock()
        while self._records:
            oldest, record = next(iter(self._records.items()))
            if record.expires > now:
                break
            self._forget(oldest)
        quota = self._quota
        if len(text) > quota.key_bytes:
            return False
        self._records[response_id] = _Record(owner, now + self._ttl_s, text)
        self._by_owner.setdefault(owner, OrderedDict())[response_id] = None
        self._bytes[owner] = self._bytes.get(owner, 0) + len(text)
        self._total += len(text)
        while self._bytes[owner] > quota.key_bytes or len(self._by_owner[owner]) > quota.key_records:
            self._forget(next(iter(self._by_owner[owner])))
        while self._total > quota.max_bytes and owner in self._by_owner:
            self._forget(next(iter(self._by_owner[owner])))  # the putting key pays, never another
        return response_id in self._records

    async def delete(self, response_id: str) -> None:
        if response_id in self._records:
            self._forget(response_id)

    def _forget(self, response_id: str) -> None:
        record = self._records.pop(response_id)
        owned = self._by_owner[record.owner]
        del owned[response_id]
        self._bytes[record.owner] -= len(record.text)
        self._total -= len(record.text)
        if not owned:
            del self._by_owner[record.owner], self._bytes[record.owner]


# Records are `llm:responses:<id>` (with Redis' own TTL, so that a read never sees an
# expired one); the index is under another prefix, so that no id a client sends can name it:
# `all` (every record, in put order), `owner:<owner>` (an owner's, in put order), `meta`
# (id -> "size expiry_ms owner"), `usage` (owner -> bytes), `total` (bytes), `seq`.
# A put's first write is the record's SET: on a Redis out of memory (`noeviction`) it is
# refused whole (a script's later writes are not checked), so it never grows past that.
_COMMON = """
local R, I = ARGV[1], ARGV[2]
local function unindex(id)
  local meta = redis.call('HGET', I .. 'meta', id)
  redis.call('ZREM', I .. 'all', id)
  if not meta then return end
  local size, _, owner = string.match(meta, '^(%d+) (%d+) (.*)$')
  redis.call('HDEL', I .. 'meta', id)
  redis.call('ZREM', I .. 'owner:' .. owner, id)
  if redis.call('HINCRBY', I .. 'usage', owner, -size) <= 0 then redis.call('HDEL', I .. 'usage', owner) end
  redis.call('DECRBY', I .. 'total', size)
end
local function forget(id)
  unindex(id)
  redis.call('DEL', R .. id)
end
"""
_PUT = _COMMON + """
local id, owner, text = ARGV[3], ARGV[4], ARGV[5]
local ttl_ms, max_bytes, key_bytes, key_records = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
  tonumber(ARGV[9])
if #text > key_bytes then
  forget(id)
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', R .. id, text, 'PX', ttl_ms)
unindex(id)  -- a record it replaces
while true do  -- expired records, oldest first
  local first = redis.call('ZRANGE', I .. 'all', 0, 0)[1]
  if not first then break end
  local meta = redis.call('HGET', I .. 'meta', first)
  if meta and tonumber(string.match(meta, '^%d+ (%d+) ')) > now then break end
  forget(first)
end
local seq = redis.call('INCR', I .. 'seq')
redis.call('ZADD', I .. 'all', seq, id)
redis.call('ZADD', I .. 'owner:' .. owner, seq, id)
redis.call('HSET', I .. 'meta', id, string.format('%d %d %s', #text, now + ttl_ms, owner))
redis.call('HINCRBY', I .. 'usage', owner, #text)
redis.call('INCRBY', I .. 'total', #text)
while tonumber(redis.call('HGET', I .. 'usage', owner) or '0') > key_bytes
    or redis.call('ZCARD', I .. 'owner:' .. owner) > key_records do
  forget(redis.call('ZRANGE', I .. 'owner:' .. owner, 0, 0)[1])
end
while tonumber(redis.call('GET', I .. 'total') or '0') > max_bytes do
  -- The putting key pays: its own oldest go, the new record last; never another key's.
  local oldest = redis.call('ZRANGE', I .. 'owner:' .. owner, 0, 0)[1]
  if not oldest then break end
  forget(oldest)
end
return redis.call('EXISTS', R .. id)
"""
_DELETE = _COMMON + """
forget(ARGV[3])
return 0
"""
_RECORDS, _INDEX = "llm:responses:", "llm:responses-index:"
T = TypeVar("T")


class RedisStore:
    """Every replica's responses, under the same bound as MemoryStore, kept by Lua scripts."""

    def __init__(self, storage: RedisStorage, ttl_s: int, quota: Quota) -> None:
        self._storage = storage
        self._redis = storage.client
        self._ttl_s = ttl_s
        self._quota = quota
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)
        storage.serves("stored responses: 503")

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._storage.call(operation)
        except StorageUnavailable:
            raise Unavailable("The response store is unavailable; retry later.") from None

    async def get(self, response_id: str) -> dict[str, Any] | None:
        raw = await self._call(lambda: self._redis.get(_RECORDS + response_id))
        return json.loads(raw) if raw is not None else None

    async def put(self, response_id: str, owner: str, text: str) -> bool:
        quota = self._quota
        args: list[str | int] = [_RECORDS, _INDEX, response_id, owner, text, self._ttl_s * 1000, quota.max_bytes,
                                 quota.key_bytes, quota.key_records]
        return bool(await self._call(lambda: self._put(args=args)))

    async def delete(self, response_id: str) -> None:
        await self._call(lambda: self._delete(args=[_RECORDS, _INDEX, response_id]))

    async def clear(self) -> None:
        """Every record and the index (tests)."""
        async def clear() -> None:
            for prefix in (_RECORDS, _INDEX):
                async for key in self._redis.scan_iter(match=prefix + "*"):
                    await self._redis.delete(key)

        await self._call(clear)


Store = MemoryStore | RedisStore


def store_uri(limits: LimitSettings) -> str:
    """RESPONSES_STORE_URI, unset: where the rate limits are (RATE_LIMIT_STORAGE_URI)."""
    return limits.responses_store_uri or limits.storage_uri


def store_for(storage: Storage, api: Any, one_tenant: bool = False) -> Store:
    """In Redis, shared by every replica, or in this replica's memory, as `storage` is
    (the one for `store_uri`). `one_tenant` (keys off): every caller is one owner, whose
    default quota is then the whole store."""
    own = api.responses_key_max_bytes or (api.responses_max_bytes if one_tenant else None)
    quota = Quota.of(api.responses_max_bytes, own, api.responses_key_max_records)
    if isinstance(storage, RedisStorage):
        return RedisStore(storage, api.responses_ttl_s, quota)
    return MemoryStore(api.responses_ttl_s, quota)
