"""Late binding between BentoML and our stack.

BentoML needs its ASGI objects when `service.py` is imported (a mounted app, middleware
classes), but our app and middleware are built at startup, from settings and the running
engine. A `Gateway` is created empty at import and filled by `install()`; until then the
mounted app answers 503 and the middleware passes everything through to BentoML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from components.core.errors import Unavailable
from components.core.responses import send_error


async def _starting(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        error = Unavailable(
            "The model is still loading; retry shortly.", code="model_loading", headers={"retry-after": "5"}
        )
        await send_error(scope, send, error)


async def _stopped(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        error = Unavailable("The server is shutting down; retry on another replica.", code="shutting_down",
                            headers={"retry-after": "5"})
        await send_error(scope, send, error)


class Gateway:
    def __init__(self) -> None:
        self._app: ASGIApp = _starting
        self._chain: ASGIApp | None = None
        self._downstream: ASGIApp | None = None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app BentoML mounts at `/`."""
        await self._app(scope, receive, send)

    def attach(self, downstream: ASGIApp) -> None:
        self._downstream = downstream

    def install_front_door(self, build_chain: Callable[[ASGIApp], ASGIApp]) -> None:
        """`build_chain` wraps BentoML's whole app (its probes and /metrics included)."""
        if self._downstream is not None:
            self._chain = build_chain(self._downstream)

    def install_app(self, app: ASGIApp) -> None:
        self._app = app

    def uninstall(self) -> None:
        """After shutdown: the API answers 503, and the front door (auth, limits, access
        log) stays in place until the process exits, for kept-alive connections too."""
        self._app = _stopped

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._chain or self._downstream
        if target is None:
            raise RuntimeError("GatewayMiddleware was never attached to BentoML's app")
        await target(scope, receive, send)


class GatewayMiddleware:
    """Registered with `Service.add_asgi_middleware`; BentoML instantiates it."""

    def __init__(self, app: ASGIApp, gateway: Gateway, **_: Any) -> None:
        self.gateway = gateway
        gateway.attach(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.dispatch(scope, receive, send)
