from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from components.core.settings import LimitSettings
from components.edge.replicas import RedisReplicas, Replicas, View, replicas_for, share
from components.storage.backend import RedisStorage, Storage

DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def dead_storage() -> RedisStorage:
    storage = Storage.from_uri(DEAD, timeout_s=0.1)
    assert isinstance(storage, RedisStorage)
    return storage


@settings(derandomize=True, max_examples=300, deadline=None)
@given(limit=st.integers(0, 10_000), count=st.integers(1, 64), identity=st.text(max_size=40))
def test_the_shares_of_every_replica_add_up_to_the_limit(limit: int, count: int, identity: str) -> None:
    """The invariant behind an outage: n replicas alone admit the limit once, never more."""
    parts = [share(limit, View(count, rank), identity) for rank in range(count)]
    assert sum(parts) == limit
    assert min(parts) >= limit // count and max(parts) <= -(-limit // count)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(limit=st.integers(0, 1000), least=st.integers(1, 64), seen=st.integers(0, 64))
def test_replicas_that_never_saw_the_count_take_no_more_than_the_least_count_allows(
        limit: int, least: int, seen: int) -> None:
    """Seen replicas share `max(seen, least)` places by rank; one that never read the count
    takes a place without a remainder: with at most `least - seen` of those, still <= limit."""
    count = max(seen, least)
    unseen = count - seen
    total = sum(share(limit, View(count, rank), "k") for rank in range(seen))
    total += unseen * share(limit, View(least, None), "k")
    assert total <= limit


def test_the_remainder_rotates_over_keys() -> None:
    owners = {next(rank for rank in range(3) if share(1, View(3, rank), f"key-{i}") == 1) for i in range(30)}
    assert owners == {0, 1, 2}  # not always the same replica


def test_alone_the_share_is_the_whole_limit() -> None:
    settings = LimitSettings()  # type: ignore[call-arg]
    alone = replicas_for(Storage.from_uri(settings.storage_uri, 1), settings)
    assert type(alone) is Replicas and alone.view == View(1, 0)
    assert alone.share(10, "req:key") == 10


def test_a_replica_that_never_read_the_count_assumes_the_least_one() -> None:
    newcomer = replicas_for(dead_storage(), LimitSettings())  # type: ignore[call-arg]
    assert isinstance(newcomer, RedisReplicas) and newcomer.view == View(1, 0)  # unset: alone
    floor4 = replicas_for(dead_storage(), LimitSettings(RATE_LIMIT_REPLICAS="4"))  # type: ignore[call-arg]
    assert floor4.view == View(4, None) and floor4.share(10, "req:key") == 2


def test_what_a_heartbeat_reads_becomes_the_view() -> None:
    replica = RedisReplicas(dead_storage(), interval_s=1, replica_id="b", least=2)
    replica.learn(["b"])
    assert replica.view == View(2, 0)  # never fewer than the least count
    replica.learn(["c", "a", "b"])
    assert replica.view == View(3, 1)  # ranked by id: the same order on every replica
    replica.learn(["a"])  # its own beat is always in: a read that misses it still counts it
    assert replica.view == View(2, 1)


def test_a_stopped_replica_never_announces_itself_again() -> None:
    """After shutdown the front door still answers kept-alive connections: their requests
    must not bring a leaving replica back into everyone's count."""
    async def scenario() -> bool:
        replica = RedisReplicas(dead_storage(), interval_s=1)
        replica.start()
        await replica.stop()
        replica.start()
        return replica._task is None

    assert asyncio.run(scenario())
