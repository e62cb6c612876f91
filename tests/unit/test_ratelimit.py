from __future__ import annotations

import asyncio

import pytest

from components.core.errors import RateLimited
from components.core.settings import LimitSettings
from components.edge.keys import Policy
from components.edge.ledger import TokenLimits
from components.edge.ratelimit import RateLimiter, Window, openai_duration
from components.edge.replicas import RedisReplicas, Replicas
from components.storage.backend import RedisStorage, Storage


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (1, "1s"), (59.2, "1m0s"), (60, "1m0s"), (361, "6m1s"), (3723, "1h2m3s")]
)
def test_openai_duration(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


def rl_settings(**env: str) -> LimitSettings:
    return LimitSettings(**env)  # type: ignore[arg-type]


def limiter(**env: str) -> RateLimiter:
    return RateLimiter(rl_settings(**env))


def test_memory_moving_window_admits_exactly_the_limit() -> None:
    async def scenario() -> None:
        rl = limiter(DEFAULT_RATE_LIMIT="3")
        windows = [await rl.admit("ip:1") for _ in range(3)]
        assert [w[0].remaining for w in windows] == [2, 1, 0]
        with pytest.raises(RateLimited) as info:
            await rl.admit("ip:1")
        assert 1 <= int(info.value.headers["retry-after"]) <= 60
        # Another identity has its own window.
        assert (await rl.admit("ip:2"))[0].remaining == 2

    asyncio.run(scenario())


def test_memory_storage_calls_are_never_cut_short_by_the_storage_time_limit() -> None:
    """Seen under load: memory-storage calls ran under the storage time limit, a lagging
    event loop (the storage waits on a lock its housekeeping holds across a thread hop)
    made them time out, and the limiter failed open: 21 of 20 requests admitted."""
    rl = limiter(DEFAULT_RATE_LIMIT="5", RATE_LIMIT_STORAGE_TIMEOUT="0.001")
    assert not rl.storage.shared
    # A call delayed by the loop, as under load.
    assert asyncio.run(rl.storage.call(lambda: asyncio.sleep(0.05, result=True))) is True


def test_per_key_limits_come_from_the_key_policy() -> None:
    rl = limiter(API_KEY_LIMITS="sk-big:500", DEFAULT_RATE_LIMIT="60")
    policy = Policy.from_env(("sk-big", "sk-small"), (), rl_settings(API_KEY_LIMITS="sk-big:500").api_key_limits)
    assert "sk-big" not in repr(policy)
    assert rl.limit_for(policy.identify("sk-big")) == 500
    assert rl.limit_for(policy.identify("sk-small")) == 60 and rl.limit_for(None) == 60


def test_global_limit_applies_over_identities() -> None:
    async def scenario() -> None:
        rl = limiter(DEFAULT_RATE_LIMIT="0", GLOBAL_RATE_LIMIT="2")
        await rl.admit("a")
        await rl.admit("b")
        with pytest.raises(RateLimited):
            await rl.admit("c")

    asyncio.run(scenario())


def test_tokens_are_charged_and_exhaustion_refuses() -> None:
    async def scenario() -> None:
        rl = limiter(DEFAULT_RATE_LIMIT="0", TOKENS_PER_MINUTE_LIMIT="100")
        assert (await rl.admit("k"))[0].remaining == 100
        hold = await rl.ledger.reserve("k", 80, TokenLimits(per_minute=100))
        assert (await rl.admit("k"))[0].remaining == 20  # a reservation in flight counts
        await hold.settle(60)
        assert (await rl.admit("k"))[0].remaining == 40
        await (await rl.ledger.reserve("k", 40, TokenLimits(per_minute=100))).settle(40)
        with pytest.raises(RateLimited) as info:
            await rl.admit("k")
        assert info.value.type == "tokens"

    asyncio.run(scenario())


DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every call fails at once


def outage_limiter(replicas: Replicas | None = None, **env: str) -> RateLimiter:
    settings = rl_settings(RATE_LIMIT_STORAGE_URI=DEAD_REDIS, RATE_LIMIT_STORAGE_TIMEOUT="0.2", **env)
    return RateLimiter(settings, replicas=replicas)


async def admitted(rl: RateLimiter, identity: str, tries: int) -> int:
    count = 0
    for _ in range(tries):
        try:
            await rl.admit(identity)
            count += 1
        except RateLimited:
            pass
    return count


def seen(count: int, rank: int) -> Replicas:
    storage = Storage.from_uri(DEAD_REDIS, timeout_s=0.1)
    assert isinstance(storage, RedisStorage)
    replicas = RedisReplicas(storage, interval_s=1, replica_id=f"r{rank}")
    replicas.learn([f"r{i}" for i in range(count)])
    return replicas


def test_in_an_outage_replicas_that_saw_each_other_admit_the_limit_once() -> None:
    async def scenario() -> list[int]:
        return [await admitted(outage_limiter(seen(3, rank), DEFAULT_RATE_LIMIT="10"), "key-a", 10)
                for rank in range(3)]

    parts = asyncio.run(scenario())
    assert sum(parts) == 10 and sorted(parts) == [3, 3, 4], parts


def test_in_an_outage_the_share_counts_what_this_replica_admitted_before_its_count_changed() -> None:
    async def scenario() -> tuple[int, int, list[Window]]:
        replicas = seen(2, 0)
        rl = outage_limiter(replicas, DEFAULT_RATE_LIMIT="10")
        first = await admitted(rl, "key-a", 3)
        replicas.learn(["r0"])  # the other replica left: the whole limit is this one's
        windows = await rl.admit("key-a")
        return first, await admitted(rl, "key-a", 10), windows

    first, then, windows = asyncio.run(scenario())
    assert first == 3 and then == 10 - 3 - 1  # the window's history stayed
    assert windows[0].limit == 10 and windows[0].remaining == 6


def test_a_replica_that_never_read_the_count_assumes_rate_limit_replicas_or_alone() -> None:
    async def scenario() -> tuple[int, int]:
        alone = await admitted(outage_limiter(DEFAULT_RATE_LIMIT="10"), "key-a", 12)
        least = await admitted(outage_limiter(DEFAULT_RATE_LIMIT="10", RATE_LIMIT_REPLICAS="4"), "key-a", 12)
        return alone, least

    assert asyncio.run(scenario()) == (10, 2)
