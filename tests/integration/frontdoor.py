"""A second instance of the front door, in-process on its own port: the real middleware,
the real limiter and a real Redis, over a tiny downstream app (no second engine)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from components.edge.front_door import FrontDoor
from components.edge.keys import Policy
from components.edge.keys_file import PolicySource
from components.edge.ratelimit import RateLimiter
from components.core.settings import LimitSettings
from harness.server import free_port


async def models_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"object": "list", "data": []}'})


@contextmanager
def front_door(keys: tuple[str, ...], **limit_env: str) -> Iterator[str]:
    limits = LimitSettings(**limit_env)  # type: ignore[arg-type]
    app = FrontDoor(
        keys=PolicySource(Policy.from_env(keys, (), limits.api_key_limits)),
        limiter=RateLimiter(limits),
        cors_origins=("*",),
        max_request_bytes=65536,
    ).build(models_app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def get_models(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
