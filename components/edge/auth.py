"""Authentication: the presented key against the current policy (components/edge/keys.py);
disabled, expired and unknown keys get 401, non-admin keys 403 on the admin routes, and
every request that needs a key 503 while no valid policy was ever loaded. Only a policy in
mode `off` (the deployment configured no key) lets requests through without one."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from components.core.context import request_context
from components.core.errors import AuthenticationFailed, PermissionDenied, Unavailable
from components.core.responses import send_error
from components.core.routes import admin_paths, public_paths
from components.edge.keys_file import PolicySource
from components.edge.tracing import span

logger = logging.getLogger(__name__)


def presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class AuthMiddleware:
    """Which routes are open without a key and which need an admin key: the route table
    (components/core/routes.py)."""

    passes_body_through = True

    def __init__(self, app: ASGIApp, keys: PolicySource, protect_metrics: bool = False,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.public = public_paths(protect_metrics)
        self.admin = admin_paths(protect_metrics)
        # Called with why a request was refused (a bounded label of vllm_auth_failures_total).
        self.on_refused = on_refused or (lambda reason: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One policy for the whole request, even if a reload swaps it meanwhile.
        policy = self.keys.current
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not policy.enabled:
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        if policy.mode == "unavailable" and scope["path"] not in self.public:
            # 503, not 401: the key may well be right, the server cannot tell (SDKs retry a
            # 503; a 401 would send a client with a good key off to rotate it).
            self.on_refused("policy_unavailable")
            unavailable = Unavailable("No valid API key policy is loaded on this server; requests that need a key are "
                                      "refused until it is fixed.", code="auth_policy_unavailable")
            await send_error(scope, send, unavailable)
            return
        with span(ctx, "auth"):
            presented = presented_key(scope)
            found = policy.identify(presented) if presented else None
            refusal = found.refusal(time.time()) if found is not None else None
        if found is not None and refusal is None:
            ctx.key_id = found.id
            ctx.policy = found
            if scope["path"] in self.admin and not found.admin:
                self.on_refused("not_admin")
                await send_error(scope, send, PermissionDenied("This route needs an admin key."))
                return
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        message = refusal or ("Missing API key." if presented is None else "Invalid API key.")
        if found is not None:
            self.on_refused("disabled" if found.disabled else "expired")
        else:
            self.on_refused("missing" if presented is None else "invalid")
        how = " Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        await send_error(scope, send, AuthenticationFailed(message + how))
