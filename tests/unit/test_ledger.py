from __future__ import annotations

import asyncio

import pytest

from components.core.errors import QuotaExceeded, TokensLimited
from components.edge.ledger import Ledger, TokenLimits


class Clock:
    def __init__(self, now: float = 1_000_020.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reservations_never_exceed_the_minute_window_and_settling_gives_back() -> None:
    async def scenario() -> None:
        clock = Clock()
        ledger = Ledger(clock=clock)
        limits = TokenLimits(per_minute=400)
        holds = []
        for _ in range(4):
            holds.append(await ledger.reserve("a", 90, limits))
        with pytest.raises(TokensLimited) as info:
            await ledger.reserve("a", 90, limits)  # 360 + 90 > 400
        assert info.value.status == 429 and info.value.type == "tokens"
        assert info.value.headers["x-ratelimit-remaining-tokens"] == "40"
        assert int(info.value.headers["retry-after"]) <= 60
        await holds[0].settle(10)  # used 10 of 90: 80 come back
        await holds[0].settle(0)  # once only
        assert (await ledger.used("a", limits))["minute"][0] == 280
        await ledger.reserve("a", 90, limits)
        # Another key has its own window.
        await ledger.reserve("b", 400, limits)
        clock.now += 60  # the next minute
        await ledger.reserve("a", 400, limits)

    asyncio.run(scenario())


def test_a_budget_refuses_the_request_that_would_exceed_it_across_minutes() -> None:
    async def scenario() -> None:
        clock = Clock()
        ledger = Ledger(clock=clock)
        limits = TokenLimits(budget=100, budget_period_s=86400)
        hold = await ledger.reserve("a", 60, limits)
        await hold.settle(60)
        clock.now += 120
        with pytest.raises(QuotaExceeded) as info:
            await ledger.reserve("a", 41, limits)
        assert info.value.code == "insufficient_quota"
        await ledger.reserve("a", 40, limits)
        used = await ledger.used("a", limits)
        assert used["budget"][0] == 100 and used["day"][0] == 100 and used["minute"][0] == 40

    asyncio.run(scenario())


def test_settling_more_than_reserved_charges_what_was_used() -> None:
    async def scenario() -> None:
        ledger = Ledger(clock=Clock())
        hold = await ledger.reserve("a", 50, TokenLimits(per_minute=1000))
        await hold.settle(70)  # a prompt estimated too low: the real count is charged
        assert (await ledger.used("a", TokenLimits()))["minute"][0] == 70

    asyncio.run(scenario())


def test_expired_buckets_are_dropped_but_not_scanned_for_on_every_reservation() -> None:
    async def scenario() -> None:
        clock = Clock()
        ledger = Ledger(clock=clock)
        limits = TokenLimits(per_minute=10)
        for i in range(1100):  # past the size bound: the first scan happens here
            await ledger.reserve(f"k{i}", 1, limits)
        buckets_now = ledger._counts
        await ledger.reserve("k-next", 1, limits)
        # Within the minute no rescan (a rescan builds a new dict): O(keys) work per
        # reservation would sit on the request path.
        assert ledger._counts is buckets_now
        clock.now += 3 * 86_400  # every bucket, the day's included, has expired
        await ledger.reserve("k-late", 1, limits)
        assert len(ledger._counts) == 2  # memory stays bounded: k-late's minute and day

    asyncio.run(scenario())


def test_with_the_storage_down_a_replica_charges_alone_within_its_share() -> None:
    """Fail open is not 'no limit': each replica keeps its share of the key's tokens (the
    replicas' shares add up to the limit). Before: an uncharged hold, every request admitted."""
    import socket

    from components.edge.ledger import RedisLedger, ledger_for
    from components.storage.backend import RedisStorage

    with socket.socket() as sock:  # a port nobody listens on: every call fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    errors: list[int] = []
    # The guard's clock stands still: the storage rests for the whole test once a call failed.
    storage = RedisStorage(f"redis://127.0.0.1:{port}/0", 0.5, on_error=lambda: errors.append(1), clock=lambda: 0.0)
    ledger = ledger_for(storage, fail_open=True)
    assert isinstance(ledger, RedisLedger)
    ledger.share = lambda limit, identity: limit // 2  # two replicas counted

    async def scenario() -> None:
        limits = TokenLimits(per_minute=100)
        first = await ledger.reserve("k", 50, limits)
        with pytest.raises(TokensLimited):
            await ledger.reserve("k", 1, limits)
        await first.settle(20)  # gives back what was not used, in this replica's count
        await ledger.reserve("k", 30, limits)
        with pytest.raises(TokensLimited):
            await ledger.reserve("k", 1, limits)
        await storage.close()

    asyncio.run(scenario())
    assert errors == [1]  # one failed call; the storage then rested, the others failed at once
