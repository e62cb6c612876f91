"""Shutdown runs once however many callers ask for it, and works when startup never ran."""

from __future__ import annotations

import asyncio

from components.runtime import Runtime
from components.settings import load_settings


def test_shutdown_without_startup_is_idempotent() -> None:
    runtime = Runtime(load_settings())
    stopped: list[int] = []
    runtime.gpu.stop = lambda: stopped.append(1)  # type: ignore[method-assign]

    async def twice() -> None:
        await runtime.shutdown()
        await runtime.shutdown()

    asyncio.run(twice())
    assert stopped == [1]
    assert runtime.readiness()[0] is False
