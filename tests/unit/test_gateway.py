from __future__ import annotations

import asyncio
import json

from components.edge.gateway import Gateway, GatewayMiddleware


def test_front_door_stays_after_uninstall_and_the_api_answers_503() -> None:
    calls: list[str] = []

    async def bentoml_app(scope, receive, send):  # type: ignore[no-untyped-def]
        await gateway.app(scope, receive, send)

    def front_door(downstream):  # type: ignore[no-untyped-def]
        async def chain(scope, receive, send):  # type: ignore[no-untyped-def]
            calls.append(scope["path"])
            await downstream(scope, receive, send)
        return chain

    gateway = Gateway()
    middleware = GatewayMiddleware(bentoml_app, gateway=gateway)
    gateway.install_front_door(front_door)
    gateway.uninstall()
    sent: list[dict] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/v1/models", "method": "GET", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    assert calls == ["/v1/models"]  # still through the front door
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["code"] == "shutting_down"
