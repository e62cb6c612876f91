"""Shutdown runs once however many callers ask for it, and works when startup never ran."""

from __future__ import annotations

import asyncio

from components.app.runtime import Runtime
from components.core.settings_env import load_settings


def test_shutdown_without_startup_is_idempotent() -> None:
    runtime = Runtime(load_settings())
    runtime.ready = True  # as if it had served: shutdown must take it out of rotation
    calls: list[str] = []
    runtime.gpu.stop = lambda: calls.append("gpu")  # type: ignore[method-assign]
    runtime.supervisor.stop = lambda: calls.append("supervisor")  # type: ignore[method-assign]
    close = runtime.limiter.close

    async def counted_close() -> None:
        calls.append("limiter")
        await close()

    runtime.limiter.close = counted_close  # type: ignore[method-assign]

    async def twice() -> None:
        await runtime.shutdown()
        await runtime.shutdown()

    asyncio.run(twice())
    assert sorted(calls) == ["gpu", "limiter", "supervisor"]
    assert runtime.readiness() == (False, "model loading")
