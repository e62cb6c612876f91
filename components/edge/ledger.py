"""Token limits that bound usage: reserve before the engine runs, settle to what it used.

A request reserves its prompt tokens plus `max_tokens` x sequences against its key's
tokens-per-minute window and its token budget; it is refused (429) if that does not fit,
and when it ends, however it ends, its owner settles the reservation to the tokens the
engine reported. So the total charged never exceeds a limit (beyond what settling a
prompt count that was estimated too low can add), and nothing in flight is forgiven.

Windows are fixed buckets (this minute, this day, this budget period) in memory for one
replica, or in Redis, where a Lua script checks and charges every bucket atomically, so
replicas sharing one Redis never admit together what one would refuse. Hand-written: the
`limits` library charges a cost but cannot reserve and then give back part of it. Redis is
reached through the shared storage's guarded call (components/storage/), which logs and
counts an outage; here only the policy: charge alone within this replica's share, or 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.core.errors import QuotaExceeded, RateLimited, TokensLimited, Unavailable
from components.storage.backend import RedisStorage, Storage
from components.storage.guard import StorageUnavailable

logger = logging.getLogger(__name__)

MINUTE, DAY = 60, 86400

_RESERVE = """
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local used = tonumber(redis.call('GET', key) or '0')
  if limit > 0 and used + amount > limit then return {i, used} end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, amount)
  redis.call('EXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return {0, 0}
"""
_SETTLE = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, tonumber(ARGV[1])) end
end
return 0
"""


@dataclass(frozen=True)
class TokenLimits:
    per_minute: int = 0  # 0: none
    budget: int = 0  # 0: none
    budget_period_s: int = DAY

    @property
    def any(self) -> bool:
        return self.per_minute > 0 or self.budget > 0


def token_limits(policy: Any, default_per_minute: int) -> TokenLimits:
    """A key's token windows: its own (keys file) or the service's TOKENS_PER_MINUTE_LIMIT."""
    if policy is None:
        return TokenLimits(per_minute=default_per_minute)
    return TokenLimits(per_minute=policy.tokens_per_minute or default_per_minute,
                       budget=policy.token_budget or 0, budget_period_s=policy.budget_period_s)


@dataclass(frozen=True)
class Bucket:
    name: str  # "minute", "day" or "budget"
    key: str
    limit: int  # 0: counted, not limited
    ttl_s: int
    reset_s: float


def buckets(kid: str, limits: TokenLimits, now: float) -> list[Bucket]:
    """The windows a request of `kid` is charged to. Minute and day are always counted
    (for /admin/usage); the budget's window only when the key has a budget."""
    def window(name: str, period: int, limit: int) -> Bucket:
        start = int(now // period)
        return Bucket(name, f"llm:tok:{kid}:{name}{period}:{start}", limit, 2 * period, (start + 1) * period - now)

    found = [window("minute", MINUTE, limits.per_minute), window("day", DAY, 0)]
    if limits.budget > 0:
        found.append(window("budget", limits.budget_period_s, limits.budget))
    return found


@dataclass(eq=False)
class Hold:
    """One request's reservation; `settle()` gives back what was not used, once."""

    ledger: Ledger | None
    kid: str
    amount: int
    keys: tuple[str, ...]
    settled: bool = field(default=False)

    async def settle(self, used: int) -> None:
        if self.settled or self.ledger is None:
            return
        self.settled = True
        delta = used - self.amount
        if delta:
            await self.ledger._adjust(self.keys, delta)


class Ledger:
    """Reserve/settle over fixed windows; memory here, Redis in `RedisLedger`."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, fail_open: bool = True) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires at)
        self._next_prune = 0.0
        self.fail_open = fail_open
        # This replica's share of a limit among the replicas it last counted (components/
        # replicas.py, set by the rate limiter): what it charges alone while the storage is down.
        self.share: Callable[[int, str], int] = lambda limit, identity: limit
        self._alone: Ledger | None = None

    async def reserve(self, kid: str, amount: int, limits: TokenLimits) -> Hold:
        """Charge `amount` to every window of `kid` if it fits in all, else raise RateLimited."""
        now = self._clock()
        windows = buckets(kid, limits, now)
        try:
            refused, used = await self._reserve(windows, amount, now)
        except StorageUnavailable:
            return await self._storage_failed(kid, amount, limits)
        if refused is not None:
            raise _refusal(refused, used, amount)
        return Hold(self, kid, amount, tuple(w.key for w in windows))

    async def used(self, kid: str, limits: TokenLimits) -> dict[str, tuple[int, Bucket]]:
        now = self._clock()
        windows = buckets(kid, limits, now)
        try:
            counts = await self._get([w.key for w in windows])
        except StorageUnavailable:  # nothing to show; a reservation still charges alone
            counts = [0] * len(windows)
        return {w.name: (count, w) for w, count in zip(windows, counts, strict=True)}

    async def _storage_failed(self, kid: str, amount: int, limits: TokenLimits) -> Hold:
        """Fail open: this replica charges alone, in memory, within its share of each of the
        key's limits (the replicas' shares add up to the limit); or fail closed: 503."""
        if not self.fail_open:
            raise Unavailable("Token accounting is unavailable; retry later.", code="rate_limiter_unavailable",
                              headers={"retry-after": "1"}) from None
        if self._alone is None:
            self._alone = Ledger(clock=self._clock)

        def alone(limit: int, window: str) -> int:  # a share of 0 must still limit: 1 refuses all
            return max(1, self.share(limit, f"tokens:{kid}:{window}")) if limit > 0 else 0

        mine = TokenLimits(alone(limits.per_minute, "minute"), alone(limits.budget, "budget"), limits.budget_period_s)
        return await self._alone.reserve(kid, amount, mine)

    # Memory storage: one event loop and no await between check and charge, so atomic.
    async def _reserve(self, windows: list[Bucket], amount: int, now: float) -> tuple[Bucket | None, int]:
        self._prune(now)
        for window in windows:
            used = self._count(window.key, now)
            if window.limit > 0 and used + amount > window.limit:
                return window, used
        for window in windows:
            self._counts[window.key] = (self._count(window.key, now) + amount, now + window.ttl_s)
        return None, 0

    async def _adjust(self, keys: tuple[str, ...], delta: int) -> None:
        now = self._clock()
        for key in keys:
            if key in self._counts:
                count, expires = self._counts[key]
                self._counts[key] = (max(0, count + delta), expires)
        self._prune(now)

    async def _get(self, keys: list[str]) -> list[int]:
        now = self._clock()
        return [self._count(key, now) for key in keys]

    def _count(self, key: str, now: float) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > now else 0

    def _prune(self, now: float) -> None:
        # At most once a minute: with many keys' live buckets above the size bound, a scan
        # on every reservation would put O(keys) work on the request path.
        if len(self._counts) > 1000 and now >= self._next_prune:
            self._next_prune = now + MINUTE
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}


class RedisLedger(Ledger):
    backend = "redis"

    def __init__(self, storage: RedisStorage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._storage = storage
        self._reserve_script = storage.client.register_script(_RESERVE)
        self._settle_script = storage.client.register_script(_SETTLE)
        storage.serves("token limits: charged in this replica's memory, to its share of each limit"
                       if self.fail_open else "token limits: 503")

    async def _reserve(self, windows: list[Bucket], amount: int, now: float) -> tuple[Bucket | None, int]:
        args: list[int] = [amount]
        for window in windows:
            args += [window.limit, window.ttl_s]
        keys = [w.key for w in windows]
        index, used = await self._storage.call(lambda: self._reserve_script(keys=keys, args=args))
        return (windows[int(index) - 1], int(used)) if int(index) else (None, 0)

    async def _adjust(self, keys: tuple[str, ...], delta: int) -> None:
        try:
            await self._storage.call(lambda: self._settle_script(keys=list(keys), args=[delta]))
        except StorageUnavailable:
            pass  # the guard logged and counted it; the tokens stay charged until the window ends

    async def _get(self, keys: list[str]) -> list[int]:
        values = await self._storage.call(lambda: self._storage.client.mget(keys))
        return [int(v) if v is not None else 0 for v in values]


def _refusal(window: Bucket, used: int, amount: int) -> RateLimited:
    left = max(0, window.limit - used)
    what = {"minute": "tokens per minute", "day": "tokens per day", "budget": "tokens in the key's budget period"}
    message = (f"Token limit reached: this request needs up to {amount} tokens (prompt + max_tokens x sequences), "
               f"{left} of {window.limit} {what[window.name]} are left.")
    retry = max(window.reset_s, 0.001)
    headers = {"retry-after": str(math.ceil(retry)), "retry-after-ms": str(math.ceil(retry * 1000))}
    if window.name == "minute":
        headers.update({"x-ratelimit-limit-tokens": str(window.limit), "x-ratelimit-remaining-tokens": str(left)})
    error = TokensLimited if window.name == "minute" else QuotaExceeded
    return error(message, headers=headers)


async def settle_quietly(hold: Hold, used: int) -> None:
    """Settle from a `finally`: never raise, even if the request's task is being cancelled."""
    try:
        await asyncio.shield(hold.settle(used))
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the request's outcome must not depend on accounting
        logger.exception("settling a token reservation failed")


def ledger_for(storage: Storage, fail_open: bool) -> Ledger:
    """Where the rate limits are (RATE_LIMIT_STORAGE_URI): shared in Redis, else in memory."""
    if isinstance(storage, RedisStorage):
        return RedisLedger(storage, fail_open=fail_open)
    return Ledger(fail_open=fail_open)


async def usage_report(ledger: Ledger, policy: Any, default_per_minute: int) -> dict[str, Any]:
    """/admin/usage: each key's tokens this minute, today and in its budget period
    (cluster-wide when the ledger is in Redis)."""
    keys = []
    for kid in policy.key_ids:
        used = await ledger.used(kid, token_limits(policy.by_id(kid), default_per_minute))
        windows = {name: {"tokens": count, "limit": bucket.limit or None, "resets_in_s": round(bucket.reset_s, 1)}
                   for name, (count, bucket) in used.items()}
        keys.append({"key_id": kid, **windows})
    return {"object": "usage", "scope": "cluster" if ledger.backend == "redis" else "replica",
            "keys_policy": policy.version, "keys": keys}
