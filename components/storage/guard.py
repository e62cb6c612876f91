"""The one guarded call to a shared storage: a time limit, a rest after a failure, one log line
per outage and one at recovery, one metric, one error type.

Every user of a storage (the rate limits, the token ledger, the replica heartbeat, the
response store) calls it through the same guard, so an outage is seen once by all of them:
after a failed call the storage rests for RETRY_S, and meanwhile every call fails at once
without touching the socket. When the rest is over, one call at a time tries the storage
again (the others still fail at once): a request waits out at most one storage timeout,
however many calls it makes, and a burst of requests cannot pile up on a dead socket.

A call the storage answered with an error (out of memory, read-only replica) fails too, but
the storage is up: no rest, so one user's refused write never sends the others to their
outage policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from limits.errors import StorageError
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger(__name__)

# After a failed call the storage is not tried for this long: an outage costs a replica at
# most one timeout per period, and the log one line per outage.
RETRY_S = 2.0
# What an unreachable or slow storage raises: redis-py's own errors, a socket's, a time
# limit's, and `limits`' wrapper around any of them.
FAILURES = (TimeoutError, OSError, RedisError, StorageError)

T = TypeVar("T")


class StorageUnavailable(Exception):
    """The storage did not answer in time, failed, or rests after a failure: each user
    applies its own outage policy (a local share, a 503)."""


class Guard:
    def __init__(self, where: str, timeout_s: float, on_error: Callable[[], None] | None = None,
                 retry_s: float = RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where  # for the log: scheme, host, port and db, never a password
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._on_error = on_error or (lambda: None)
        self._clock = clock
        self.policies: dict[str, None] = {}  # what each user does meanwhile, for the outage's log line
        # What reached the storage and what did not; the outage tests read them.
        self.calls = 0  # calls that touched the storage
        self.failures = 0  # of those, the ones that failed or timed out
        self.skipped = 0  # calls refused at once while the storage rested
        self.pending = 0  # calls under way
        self._retry_at = 0.0  # clock; while down, nothing is tried before it
        self._down = False  # an outage is under way (logged; its end will be)
        self._trying = False  # while down: the one call that tries the storage again
        self._outage_failures = 0
        self._outage_skipped = 0
        self._refused = False  # an answered error was logged; the next success clears it

    @property
    def down(self) -> bool:
        return self._down

    def serves(self, policy: str) -> None:
        """Name a user's outage policy ("rate limits: ..."), shown in the outage's log line."""
        self.policies[policy] = None

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()` within the time limit, or StorageUnavailable. It is not even
        started while the storage rests, or while another call tries it again."""
        if self._down and (self._trying or self._clock() < self._retry_at):
            self.skipped += 1
            self._outage_skipped += 1
            raise StorageUnavailable(self.where)
        trying = self._down
        if trying:
            self._trying = True
        self.calls += 1
        self.pending += 1
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the request path.
            async with asyncio.timeout(self.timeout_s):
                result = await operation()
        except FAILURES as exc:
            cause = exc.storage_error if isinstance(exc, StorageError) else exc
            self.failures += 1
            self._on_error()
            if isinstance(cause, ResponseError):
                self._answered_with(cause)
            else:
                self._failed(cause)
            raise StorageUnavailable(self.where) from None
        finally:
            self.pending -= 1
            if trying:
                self._trying = False
        self._succeeded()
        return result

    def _failed(self, cause: BaseException) -> None:
        self._retry_at = self._clock() + self.retry_s
        self._outage_failures += 1
        if self._down:
            return
        self._down = True
        meanwhile = "; ".join(self.policies) or "its users fall back"
        logger.error("storage %s unavailable (%s); tried again every %.0f s, meanwhile %s",
                     self.where, type(cause).__name__, self.retry_s, meanwhile)

    def _answered_with(self, cause: ResponseError) -> None:
        self._back()  # it answered: up, however it refused
        if not self._refused:
            self._refused = True
            logger.error("storage %s refused a call: %s", self.where, str(cause)[:200])

    def _succeeded(self) -> None:
        self._refused = False
        self._back()

    def _back(self) -> None:
        if not self._down:
            return
        logger.warning("storage %s is back after %d failed call(s); %d call(s) were refused at once meanwhile",
                       self.where, self._outage_failures, self._outage_skipped)
        self._down = False
        self._outage_failures = self._outage_skipped = 0
