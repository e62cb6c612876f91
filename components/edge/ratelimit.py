"""Request and token rate limits with the `limits` library, in memory or shared through Redis.

Requests use the moving-window strategy: it keeps each hit's timestamp, so no window edge
lets a double burst through and the count is exact across replicas sharing one Redis.
Tokens are reserved and settled by the generation path (components/edge/ledger.py); here they
only give the x-ratelimit-*-tokens headers and refuse a key whose window is already full.

While a shared storage (Redis) is unreachable or slow, each replica limits alone, to its
share of each limit among the replicas it last saw alive (components/edge/replicas.py: the
shares add up to the limit): an outage makes a limit less exact, not absent. The local
windows count every request this replica admitted, through the storage or alone, so a
replica that already used its share before the outage gets nothing more. Storage calls go
through the storage's one guarded call (components/storage/), shared with the token ledger,
the heartbeat and the response store: a time limit, a rest after a failure, one log line.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import request_context
from components.core.errors import RateLimited, ServiceError, TokensLimited, Unavailable
from components.core.responses import send_error
from components.core.routes import public_paths
from components.core.settings import LimitSettings
from components.edge.ledger import Ledger, ledger_for, token_limits
from components.edge.replicas import Replicas, replicas_for
from components.edge.tracing import span
from components.storage.backend import Storage
from components.storage.guard import StorageUnavailable


def openai_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: 1s, 6m0s, 1h2m3s, 250ms."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True)
class Window:
    kind: str  # "requests" or "tokens"
    limit: int
    remaining: int
    reset_s: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (f"x-ratelimit-limit-{self.kind}".encode(), str(self.limit).encode()),
            (f"x-ratelimit-remaining-{self.kind}".encode(), str(max(0, self.remaining)).encode()),
            (f"x-ratelimit-reset-{self.kind}".encode(), openai_duration(self.reset_s).encode()),
        ]


def rejection(window: Window, message: str, shown: list[Window]) -> RateLimited:
    """A 429 whose retry-after is `window`'s reset, carrying the x-ratelimit-* headers of
    `shown` as an admitted response would (clients read them on 429s too)."""
    retry = max(window.reset_s, 0.001)
    headers = {"retry-after": str(math.ceil(retry)), "retry-after-ms": str(math.ceil(retry * 1000))}
    for each in shown:
        headers.update((name.decode(), value.decode()) for name, value in each.headers())
    return RateLimited(message, headers=headers)


class RateLimiter:
    """`storage`: RATE_LIMIT_STORAGE_URI's, shared with the ledger and the heartbeat (and
    closed by whoever opened it); unset, the limiter opens its own and closes it."""

    def __init__(
        self,
        settings: LimitSettings,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self._owns_storage = storage is None
        self.storage = storage or Storage.from_uri(settings.storage_uri, settings.storage_timeout_s)
        self._requests = MovingWindowRateLimiter(self.storage.limits_storage())
        # This replica's own windows: what it admitted, its share while the storage is down.
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._alone_lock = asyncio.Lock()
        self.replicas = replicas or replicas_for(self.storage, settings)
        self.window_s = max(1, round(settings.window_minutes * 60))
        self.default_limit = settings.default_rate_limit
        self.global_limit = settings.global_rate_limit
        self.tokens_per_minute = settings.tokens_per_minute
        self.fail_open = settings.fail_open
        self._clock = clock
        self.ledger = ledger or ledger_for(self.storage, settings.fail_open)
        # While the storage is down the ledger too limits each key to this replica's share.
        self.ledger.share = self.replicas.share
        self.storage.serves("rate limits: each replica alone, to its share of the replicas it last saw"
                            if self.fail_open else "rate limits: 503")

    def limit_for(self, policy: Any) -> int:
        """The key's own requests per window (API_KEY_LIMITS or the keys file), else the default."""
        own = getattr(policy, "requests_per_minute", None)
        return own if own else self.default_limit

    def _item(self, limit: int, seconds: int) -> RateLimitItem:
        return RateLimitItemPerSecond(limit, seconds)

    async def _hit(self, kind: str, limit: int, identity: str) -> tuple[bool, Window]:
        item = self._item(limit, self.window_s)
        try:
            allowed = await self.storage.call(lambda: self._requests.hit(item, kind, identity))
            stats = await self.storage.call(lambda: self._requests.get_window_stats(item, kind, identity))
        except StorageUnavailable:
            if not self.fail_open:
                raise Unavailable("Rate limiting is unavailable; retry later.", code="rate_limiter_unavailable",
                                  headers={"retry-after": "1"}) from None
            return await self._alone(kind, limit, identity)
        if allowed and self.storage.shared:
            # Recorded here too: once the storage fails, this replica's share is what is left.
            await self._local.hit(item, kind, identity)
        reset = max(0.0, stats.reset_time - self._clock())
        return bool(allowed), Window("requests", limit, stats.remaining, reset)

    async def _alone(self, kind: str, limit: int, identity: str) -> tuple[bool, Window]:
        """This replica's share of `limit`, less what it admitted in the window (through the
        storage or alone). The local windows are keyed by the whole limit, so a share that
        changes with the replica count keeps the window's history."""
        share = self.replicas.share(limit, f"{kind}:{identity}")
        item = self._item(limit, self.window_s)
        async with self._alone_lock:  # read and count as one step: the memory storage may yield
            stats = await self._local.get_window_stats(item, kind, identity)
            used = limit - stats.remaining
            allowed = used < share and await self._local.hit(item, kind, identity)
        reset = max(0.0, stats.reset_time - time.time())
        return allowed, Window("requests", share, share - used - int(allowed), reset)

    async def admit(self, identity: str, policy: Any = None, tenant: str | None = None) -> list[Window]:
        """Count one request; raise RateLimited (with headers) when over a limit. Tokens are
        counted per `tenant` (the key's id; "anonymous" without keys), as the ledger charges."""
        self.replicas.start()  # at ready (service.py); here too for a limiter used alone
        windows: list[Window] = []
        limit = self.limit_for(policy)
        if limit > 0:
            allowed, window = await self._hit("req", limit, identity)
            windows.append(window)
            if not allowed:
                per = openai_duration(self.window_s)
                raise rejection(window, f"Rate limit reached: {window.limit} requests per {per}.", windows)
        if self.global_limit > 0:
            allowed, window = await self._hit("global", self.global_limit, "all")
            # The global window is not the caller's own: it sets retry-after only.
            if not allowed:
                raise rejection(window, "The service's global rate limit is reached.", windows)
        limits = token_limits(policy, self.tokens_per_minute)
        if limits.per_minute > 0:
            used, bucket = (await self.ledger.used(tenant or identity, limits))["minute"]
            window = Window("tokens", limits.per_minute, limits.per_minute - used, bucket.reset_s)
            windows.append(window)
            if used >= limits.per_minute:
                error = rejection(window, f"Token rate limit reached: {limits.per_minute} tokens per minute.",
                                  windows)
                raise TokensLimited(error.message, headers=error.headers)
        return windows

    async def close(self) -> None:
        """Leave the replica set; close the storage if this limiter opened it."""
        await self.replicas.stop()
        if self._owns_storage:
            await self.storage.close()


class RateLimitMiddleware:
    """Per-key (or per-IP without keys), global and token limits on every route but the
    public ones, with OpenAI's x-ratelimit-* headers on every response of those routes,
    429s included."""

    passes_body_through = True

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        on_rejected: Callable[[str], None] | None = None,
        public: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.on_rejected = on_rejected or (lambda kind: None)
        self.public = public_paths(protect_metrics=False) if public is None else public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        identity = ctx.key_id
        if identity is None:
            client = scope.get("client")
            identity = f"ip:{client[0] if client else 'unknown'}"
        try:
            with span(ctx, "rate_limit"):
                windows = await self.limiter.admit(identity, ctx.policy, ctx.tenant)
        except ServiceError as error:
            self.on_rejected(error.code or "unknown")
            await send_error(scope, send, error)
            return
        extra = [header for window in windows for header in window.headers()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                # A later refusal (the token reservation's 429) sets its own, newer values.
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
