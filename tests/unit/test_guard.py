from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from limits.errors import StorageError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from components.storage.backend import Storage, Storages, where
from components.storage.guard import RETRY_S, Guard, StorageUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Target:
    """What the guard calls: counts the calls that reached it, fails while `down`."""

    def __init__(self) -> None:
        self.touched = 0
        self.down = False

    def operation(self, error: Exception | None = None) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            self.touched += 1
            if self.down:
                raise error or RedisConnectionError("refused")
            return "ok"

        return call


def guard(clock: Clock, errors: list[int] | None = None) -> Guard:
    counted = errors if errors is not None else []
    return Guard("redis://h:6379/0", timeout_s=5, on_error=lambda: counted.append(1), clock=clock)


async def outcome(g: Guard, operation: Callable[[], Awaitable[str]]) -> str:
    try:
        return await g.call(operation)
    except StorageUnavailable:
        return "unavailable"


def test_after_a_failure_calls_fail_at_once_without_touching_the_storage_until_the_rest_is_over() -> None:
    async def scenario() -> None:
        clock, store, errors = Clock(), Target(), list[int]()
        g = guard(clock, errors)
        store.down = True
        assert await outcome(g, store.operation()) == "unavailable"
        assert store.touched == 1 and g.down
        for _ in range(5):
            clock.now += RETRY_S / 10
            assert await outcome(g, store.operation()) == "unavailable"
        assert store.touched == 1 and g.skipped == 5 and errors == [1]  # skipped calls are not errors
        clock.now += RETRY_S
        assert await outcome(g, store.operation()) == "unavailable"  # tried again, still down
        assert store.touched == 2 and errors == [1, 1]
        store.down = False
        assert await outcome(g, store.operation()) == "unavailable"  # resting again
        clock.now += RETRY_S
        assert await outcome(g, store.operation()) == "ok" and not g.down
        assert (g.calls, g.failures, g.skipped) == (3, 2, 6)

    asyncio.run(scenario())


def test_one_call_at_a_time_tries_a_resting_storage_again() -> None:
    async def scenario() -> None:
        clock, store = Clock(), Target()
        g = guard(clock)
        store.down = True
        await outcome(g, store.operation())
        clock.now += RETRY_S
        store.down = False
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "ok"

        trying = asyncio.create_task(g.call(slow))
        await asyncio.sleep(0)  # the try is under way
        assert await outcome(g, store.operation()) == "unavailable"  # not a second one meanwhile
        release.set()
        assert await trying == "ok"
        assert await outcome(g, store.operation()) == "ok"

    asyncio.run(scenario())


def test_an_outage_is_logged_once_with_its_users_policies_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        clock, store = Clock(), Target()
        g = guard(clock)
        g.serves("rate limits: a share")
        g.serves("stored responses: 503")
        store.down = True
        for _ in range(4):
            await outcome(g, store.operation())
            await outcome(g, store.operation())
            clock.now += RETRY_S
        store.down = False
        await outcome(g, store.operation())
        await outcome(g, store.operation())

    caplog.set_level(logging.INFO, logger="components.storage.guard")
    asyncio.run(scenario())
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "ERROR" and "rate limits: a share; stored responses: 503" in lines[0][1]
    assert lines[1][0] == "WARNING" and "back after 4 failed call(s); 4 call(s) were refused" in lines[1][1]


def test_a_call_past_the_time_limit_fails_and_the_storage_rests() -> None:
    async def scenario() -> None:
        g = Guard("redis://h:6379/0", timeout_s=0.01, clock=Clock())

        async def hangs() -> str:
            await asyncio.Event().wait()
            return "never"

        assert await outcome(g, hangs) == "unavailable"
        assert g.down and g.failures == 1

    asyncio.run(scenario())


def test_an_answered_error_fails_the_call_but_the_storage_does_not_rest() -> None:
    """A Redis out of memory refused the store's write: the rate limits must not fall back."""
    async def scenario() -> None:
        clock, store, errors = Clock(), Target(), list[int]()
        g = guard(clock, errors)
        store.down = True
        assert await outcome(g, store.operation(ResponseError("OOM command not allowed"))) == "unavailable"
        assert await outcome(g, store.operation(StorageError(ResponseError("OOM")))) == "unavailable"
        store.down = False
        assert await outcome(g, store.operation()) == "ok"
        assert store.touched == 3 and not g.down and errors == [1, 1]

    asyncio.run(scenario())


def test_limits_wrapped_connection_errors_are_an_outage() -> None:
    async def scenario() -> None:
        clock, store = Clock(), Target()
        g = guard(clock)
        store.down = True
        await outcome(g, store.operation(StorageError(RedisConnectionError("refused"))))
        assert g.down and await outcome(g, store.operation()) == "unavailable" and store.touched == 1

    asyncio.run(scenario())


def test_a_storage_is_chosen_once_per_uri_and_logged_without_its_password() -> None:
    storages = Storages(timeout_s=1)
    memory = storages.get("memory://")
    redis_a = storages.get("redis://:secret@127.0.0.1:1/0")
    assert type(memory) is Storage and not memory.shared
    assert redis_a.shared and storages.get("redis://:secret@127.0.0.1:1/0") is redis_a
    assert storages.get("redis://127.0.0.1:2/0") is not redis_a
    assert where("redis://:secret@127.0.0.1:1/0") == "redis://127.0.0.1:1/0"
    assert where("redis+unix:///run/redis.sock?db=1") == "redis+unix:///run/redis.sock"
    asyncio.run(storages.close())
