"""The supervisor with a fake engine and an injected clock; the health document as a pure
function of a snapshot."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from components.serving.admission import Admission
from components.serving.breaker import CircuitBreaker, State
from components.core.errors import EngineDead, Unavailable
from components.edge.health import Snapshot, health_document, readiness
from components.serving.lifecycle import Gate
from components.app.supervisor import FORCE_EXIT_GRACE_S, Supervisor


class FakeEngine:
    def __init__(self) -> None:
        self.dead = False
        self.polls = 0

    def is_dead(self) -> bool:
        self.polls += 1
        return self.dead


class Clock:
    """`sleep` that advances a fake clock and yields once, so nothing waits for real."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make(engine: FakeEngine, clock: Clock, death_exit_s: float = 0) -> tuple[Supervisor, Gate, list[int], list[int]]:
    async def aborter(ids: Any) -> None:
        return None

    gate = Gate(Admission(2, 2, max_wait_s=10), CircuitBreaker(min_calls=1), aborter, 0)
    exits: list[int] = []
    shutdowns: list[int] = []

    async def shutdown() -> None:
        shutdowns.append(1)

    supervisor = Supervisor(gate, engine.is_dead, shutdown, watchdog_interval_s=2, death_exit_s=death_exit_s,
                            drain_timeout_s=30, sleep=clock.sleep, exit=exits.append)
    return supervisor, gate, exits, shutdowns


def test_watchdog_polls_until_the_engine_dies_then_fails_everything_and_exits() -> None:
    async def scenario() -> None:
        engine, clock = FakeEngine(), Clock()
        supervisor, gate, exits, _ = make(engine, clock, death_exit_s=7)
        running = await gate.admit("k", 1, ["a"])
        watch = asyncio.ensure_future(supervisor.watch())
        while engine.polls < 3:
            await asyncio.sleep(0)
        assert supervisor.engine_alive and not exits
        engine.dead = True
        await asyncio.wait_for(watch, 1)
        assert not supervisor.engine_alive
        assert gate.breaker.state is State.OPEN
        assert isinstance(running.abort_error, EngineDead)
        with pytest.raises(Unavailable) as refused:
            await gate.admit("k", 1, ["b"])
        assert refused.value.code in ("engine_dead", "circuit_open")
        assert clock.sleeps[-1] == 7 and exits == [3]

    asyncio.run(scenario())


def test_watchdog_does_not_call_a_draining_engine_dead() -> None:
    async def scenario() -> None:
        engine, clock = FakeEngine(), Clock()
        supervisor, _, exits, _ = make(engine, clock, death_exit_s=1)
        supervisor.draining = True
        engine.dead = True  # the core exits by itself once drained
        watch = asyncio.ensure_future(supervisor.watch())
        while len(clock.sleeps) < 5:
            await asyncio.sleep(0)
        watch.cancel()
        assert supervisor.engine_alive and not exits and engine.polls == 0

    asyncio.run(scenario())


class FakeUvicorn:
    """The attributes of uvicorn.Server the drain relies on."""

    def __init__(self) -> None:
        self.force_exit = False
        self.signals: list[int] = []

    def handle_exit(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)


def test_drain_then_hands_the_signal_to_uvicorn_then_forces_the_exit() -> None:
    async def scenario() -> None:
        engine, clock = FakeEngine(), Clock()
        supervisor, gate, _, shutdowns = make(engine, clock)
        server = FakeUvicorn()
        async with await gate.admit("k", 1, ["a"]):
            drain = asyncio.ensure_future(supervisor.drain_then_exit(server.handle_exit, signal.SIGTERM, None))
            await asyncio.sleep(0)
            assert supervisor.draining and not server.signals  # in-flight work first
        await asyncio.wait_for(drain, 5)
        assert server.signals == [signal.SIGTERM]
        assert clock.sleeps == [FORCE_EXIT_GRACE_S]
        assert shutdowns == [1] and server.force_exit

    asyncio.run(scenario())


def test_sigterm_starts_one_drain_however_many_arrive() -> None:
    async def scenario() -> None:
        engine, clock = FakeEngine(), Clock()
        supervisor, gate, _, _ = make(engine, clock)
        handled: list[int] = []
        original = signal.signal(signal.SIGTERM, lambda signum, frame: handled.append(signum))
        try:
            supervisor._install_sigterm()
            async with await gate.admit("k", 1, ["a"]):
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                assert supervisor.draining  # set by the handler itself, before any task runs
                await asyncio.sleep(0)
                assert handled == []  # the previous handler waits for the drain
            while not handled:
                await asyncio.sleep(0.01)
            await asyncio.gather(*supervisor.tasks)
            assert handled == [signal.SIGTERM] and len(supervisor.tasks) == 1
        finally:
            signal.signal(signal.SIGTERM, original)

    asyncio.run(asyncio.wait_for(scenario(), 5))


def snapshot(**changes: Any) -> Snapshot:
    base = {"loaded": True, "engine_alive": True, "draining": False, "breaker": "closed"}
    return Snapshot(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "status", "ready", "reason"),
    [
        ({}, "healthy", True, "ready"),
        ({"loaded": False}, "starting", False, "model loading"),
        ({"engine_alive": False}, "dead", False, "engine dead"),
        ({"draining": True}, "degraded", False, "draining"),
        ({"breaker": "open"}, "degraded", True, "ready"),
        ({"breaker": "open", "readiness_strict": True}, "degraded", False, "circuit breaker open"),
        ({"breaker": "half_open", "readiness_strict": True}, "degraded", True, "ready"),
    ],
)
def test_health_document_and_readiness(changes: dict[str, Any], status: str, ready: bool, reason: str) -> None:
    s = snapshot(**changes)
    document = health_document(s, "2026-11-27T00:00:00Z")
    assert document["status"] == status
    assert readiness(s) == (ready, reason)
    assert document["reason"] == reason
    assert document["circuit_breaker_state"] == s.breaker


def test_health_document_carries_counts_and_device() -> None:
    s = snapshot(active_requests=3, queued_requests=2, total_requests=9, engine_unfinished_requests=3,
                 device={"gpu_count": 0}, uptime_seconds=12.345, model="m")
    document = health_document(s, "t")
    assert (document["active_requests"], document["queued_requests"], document["total_requests"]) == (3, 2, 9)
    assert document["gpu_count"] == 0 and document["uptime_seconds"] == 12.3 and document["model"] == "m"
