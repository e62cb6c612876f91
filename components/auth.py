"""API keys: kept only as digests, compared in constant time, named in logs by a short id."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from components.context import request_context
from components.errors import AuthenticationFailed, PermissionDenied
from components.responses import send_error

logger = logging.getLogger(__name__)

# Open without a key: probes, the API docs, and /metrics unless PROTECT_METRICS is set.
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/openapi.json"})
# Need an admin key (ADMIN_API_KEYS) whenever keys are on: they show the service's insides.
ADMIN_PATHS = frozenset({"/debug/runtime"})


def public_paths(protect_metrics: bool) -> frozenset[str]:
    return PUBLIC_PATHS if protect_metrics else PUBLIC_PATHS | {"/metrics"}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key, safe for logs and metric labels."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class KeyStore:
    digests: tuple[tuple[bytes, str], ...]
    admin_ids: frozenset[str] = frozenset()

    @classmethod
    def from_keys(cls, keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()) -> KeyStore:
        # An admin key is an API key too: it authenticates every route.
        every = dict.fromkeys((*keys, *admin_keys))
        return cls(tuple((_digest(k), key_id(k)) for k in every), frozenset(key_id(k) for k in admin_keys))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def identify(self, presented: str) -> str | None:
        """The key id of a valid key, else None. Compares against every key, no early exit."""
        candidate = _digest(presented)
        found = None
        for digest, kid in self.digests:
            if hmac.compare_digest(candidate, digest):
                found = kid
        return found

    def is_admin(self, kid: str) -> bool:
        return kid in self.admin_ids


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
    def __init__(self, app: ASGIApp, keys: KeyStore, protect_metrics: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.public = public_paths(protect_metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        kid = self.keys.identify(presented) if presented else None
        ctx = request_context(scope)
        if kid is not None:
            ctx.key_id = kid
            if scope["path"] in ADMIN_PATHS and not self.keys.is_admin(kid):
                ctx.error_type = "permission_denied"
                await send_error(send, PermissionDenied("This route needs an admin key (ADMIN_API_KEYS)."))
                return
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        message = "Missing API key." if presented is None else "Invalid API key."
        ctx.error_type = "invalid_api_key"
        await send_error(send, AuthenticationFailed(message + " Send it as 'Authorization: Bearer <key>'."))
