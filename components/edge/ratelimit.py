"""Request and token rate limits with the `limits` library, in memory or shared through Redis.

Requests use the moving-window strategy: it keeps each hit's timestamp, so no window edge
lets a double burst through and the count is exact across replicas sharing one Redis.
Tokens are reserved and settled by the generation path (components/edge/ledger.py); here they
only give the x-ratelimit-*-tokens headers and refuse a key whose window is already full.

While a shared storage (Redis) is unreachable or slow, each replica limits alone, to its
share of each limit among the replicas it last saw alive (components/edge/replicas.py: the
shares add up to the limit): an outage makes a limit less exact, not absent. The local
windows count every request this replica admitted, through the storage or alone, so a
replica that already used its share before the outage gets nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.core.context import request_context
from components.core.errors import RateLimited, ServiceError, TokensLimited, Unavailable
from components.core.responses import send_error
from components.core.settings import LimitSettings
from components.edge.auth import public_paths
from components.edge.ledger import Ledger, ledger_for, token_limits
from components.edge.replicas import Replicas, replicas_for
from components.edge.tracing import span

logger = logging.getLogger(__name__)


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


# After a failed storage call, requests are limited locally for this long before the
# storage is tried again: an outage costs each request at most one timeout per period, and
# the log one line per outage.
STORAGE_RETRY_S = 2.0


class _StorageDown(Exception):
    pass


class RateLimiter:
    def __init__(
        self,
        settings: LimitSettings,
        on_storage_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        uri = "async+" + settings.storage_uri
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if not settings.storage_uri.startswith("memory://"):
            options.update(
                implementation="redispy",
                socket_timeout=settings.storage_timeout_s,
                socket_connect_timeout=settings.storage_timeout_s,
            )
        self.storage = storage_from_string(uri, **options)
        self._requests = MovingWindowRateLimiter(self.storage)
        # This replica's own windows: what it admitted, its share while the storage is down.
        self._local = MovingWindowRateLimiter(storage_from_string("async+memory://"))
        self._alone_lock = asyncio.Lock()
        self.replicas = replicas or replicas_for(settings)
        self._retry_at = 0.0  # monotonic; storage calls are skipped until then
        self._failures = 0
        self.window_s = max(1, round(settings.window_minutes * 60))
        self.default_limit = settings.default_rate_limit
        self.global_limit = settings.global_rate_limit
        self.tokens_per_minute = settings.tokens_per_minute
        self.fail_open = settings.fail_open
        self.timeout_s = settings.storage_timeout_s * 2
        self.backend = settings.storage_uri.split("://", 1)[0]
        self._on_storage_error = on_storage_error or (lambda: None)
        self._clock = clock
        self.ledger = ledger or ledger_for(settings, self._on_storage_error)
        # While the storage is down the ledger too limits each key to this replica's share.
        self.ledger.share = self.replicas.share

    def limit_for(self, policy: Any) -> int:
        """The key's own requests per window (API_KEY_LIMITS or the keys file), else the default."""
        own = getattr(policy, "requests_per_minute", None)
        return own if own else self.default_limit

    def _item(self, limit: int, seconds: int) -> RateLimitItem:
        return RateLimitItemPerSecond(limit, seconds)

    async def _guard(self, operation):  # type: ignore[no-untyped-def]
        """Storage calls never hang and never surface as a 500: a failure raises _StorageDown
        (counted; logged once per outage), and the storage rests for STORAGE_RETRY_S."""
        if self.backend == "memory":
            # In-process: it cannot hang, and a time limit would only measure the event
            # loop's lag, so a loaded loop failed open and let requests past the limit.
            return await operation
        if time.monotonic() < self._retry_at:
            operation.close()
            raise _StorageDown
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the request path.
            async with asyncio.timeout(self.timeout_s):
                result = await operation
        except (TimeoutError, StorageError, OSError) as exc:
            self._on_storage_error()
            self._retry_at = time.monotonic() + STORAGE_RETRY_S
            if not self._failures:
                logger.error("rate-limit storage (%s) unavailable: %s; %s", self.backend, type(exc).__name__,
                             f"limiting to this replica's share ({self.replicas.view.count} replicas)"
                             if self.fail_open else "refusing requests")
            self._failures += 1
            raise _StorageDown from None
        if self._failures:
            logger.warning("rate-limit storage (%s) is back after %d failed call(s)", self.backend, self._failures)
            self._failures = 0
        return result

    async def _hit(self, kind: str, limit: int, identity: str) -> tuple[bool, Window]:
        item = self._item(limit, self.window_s)
        try:
            allowed = await self._guard(self._requests.hit(item, kind, identity))
            stats = await self._guard(self._requests.get_window_stats(item, kind, identity))
        except _StorageDown:
            if not self.fail_open:
                raise Unavailable("Rate limiting is unavailable; retry later.", code="rate_limiter_unavailable",
                                  headers={"retry-after": "1"}) from None
            return await self._alone(kind, limit, identity)
        if allowed and self.backend != "memory":
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
        await self.replicas.stop()
        # Only the redis-py storage holds a connection pool worth closing.
        pool = getattr(getattr(self.storage, "bridge", None), "storage", None)
        close = getattr(pool, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # noqa: BLE001 - shutdown must go on
                logger.debug("closing rate-limit storage failed", exc_info=True)


class RateLimitMiddleware:
    """Per-key (or per-IP without keys), global and token limits on every route but the
    public ones, with OpenAI's x-ratelimit-* headers on every response of those routes,
    429s included."""

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
            ctx.error_type = error.code
            self.on_rejected(error.code or "unknown")
            await send_error(send, error)
            return
        extra = [header for window in windows for header in window.headers()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                # A later refusal (the token reservation's 429) sets its own, newer values.
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
