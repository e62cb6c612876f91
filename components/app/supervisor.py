"""The engine's watchdog, what engine death does to the service, and the SIGTERM drain.

The only module that touches uvicorn's internals: `uvicorn.Server.handle_exit` (the
SIGTERM handler it installs) and its `force_exit` and `server_state.connections`
attributes, as of uvicorn 0.3x. After an upgrade, re-read `uvicorn/server.py`; if they
change, the drain still ends with uvicorn's own exit, only the forced exit after 5 s
is lost (logged at WARNING).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from components.core.errors import EngineDead
from components.serving.lifecycle import Gate

logger = logging.getLogger(__name__)

# Seconds uvicorn gets after our drain to close idle connections before the forced exit.
FORCE_EXIT_GRACE_S = 5.0


class Supervisor:
    """Watches the engine and owns the two ways a replica ends: engine death and SIGTERM.

    `engine_dead` says whether the engine is gone; `shutdown` takes the service down
    (given as a callback so that this module never imports the runtime); `sleep` and
    `exit` are injectable for tests.
    """

    def __init__(
        self,
        gate: Gate,
        engine_dead: Callable[[], bool],
        shutdown: Callable[[], Awaitable[None]],
        watchdog_interval_s: float,
        death_exit_s: float,
        drain_timeout_s: float,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.gate = gate
        self.engine_dead = engine_dead
        self.shutdown = shutdown
        self.watchdog_interval_s = watchdog_interval_s
        self.death_exit_s = death_exit_s
        self.drain_timeout_s = drain_timeout_s
        self._sleep = sleep
        self._exit = exit
        self.engine_alive = True
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        self._spawn(self.watch())
        self._install_sigterm()

    def stop(self) -> None:
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def _spawn(self, coroutine: Any) -> None:
        self.tasks.append(asyncio.ensure_future(coroutine))

    # --- engine death -------------------------------------------------------------

    async def watch(self) -> None:
        while self.engine_alive:
            await self._sleep(self.watchdog_interval_s)
            # While draining the engine core exits on its own once its work is done.
            if not self.draining and self.engine_dead():
                await self.on_engine_death()

    async def on_engine_death(self) -> None:
        self.engine_alive = False
        reason = "The inference engine died; this replica is restarting."
        logger.error("engine core process died; %d request(s) in flight, %d queued",
                     len(self.gate.inflight), self.gate.admission.waiting)
        self.gate.breaker.force_open(reason)
        self.gate.admission.close(reason, code="engine_dead")
        # vLLM fails its own in-flight generators with EngineDeadError; this covers any
        # that would still wait.
        self.gate.abort_all(EngineDead(reason))
        if self.death_exit_s > 0:
            # Exit non-zero so that the process manager (BentoML outside a container,
            # Kubernetes inside one) starts a fresh engine; liveness already fails.
            await self._sleep(self.death_exit_s)
            logger.error("exiting after engine death")
            self._exit(3)

    # --- graceful shutdown --------------------------------------------------------

    def _install_sigterm(self) -> None:
        """Drain before uvicorn's own SIGTERM handling closes the listener.

        uvicorn would stop accepting at once and wait for connections without bound; we
        first refuse new requests with 503 (readiness fails), let in-flight ones finish up
        to GRACEFUL_SHUTDOWN_TIMEOUT, abort the rest, then hand the signal to uvicorn.
        """
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining:
                return
            self.draining = True
            loop.call_soon_threadsafe(lambda: self._spawn(self.drain_then_exit(previous, signum, frame)))

        signal.signal(signal.SIGTERM, on_sigterm)

    async def drain_then_exit(self, previous: Any, signum: int, frame: Any) -> None:
        self.draining = True
        logger.info("SIGTERM: draining %d in-flight request(s), up to %.0f s",
                    len(self.gate.inflight), self.drain_timeout_s)
        clean = await self.gate.drain(self.drain_timeout_s)
        logger.info("drain %s", "complete" if clean else "ended by timeout")
        if not callable(previous):
            raise SystemExit(0)
        previous(signum, frame)
        # uvicorn now closes idle connections and waits, without bound, for the others.
        # Our own requests are finished; a client that keeps a connection open must not
        # keep the process (and the pod) alive: after a short grace, force the exit.
        server = getattr(previous, "__self__", None)  # the uvicorn.Server whose handle_exit this is
        if server is None or not hasattr(server, "force_exit"):
            logger.warning("the SIGTERM handler is not uvicorn's: no forced exit after the drain")
            return
        await self._sleep(FORCE_EXIT_GRACE_S)
        connections = getattr(getattr(server, "server_state", None), "connections", ())
        logger.warning("%d connection(s) still open %.0f s after the drain; forcing the exit",
                       len(connections), FORCE_EXIT_GRACE_S)
        # uvicorn skips the lifespan shutdown when forced: run ours first.
        await self.shutdown()
        server.force_exit = True
