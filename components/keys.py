"""Tenant policy: who may call, with which limits, on which models, at which priority.

A `Policy` is immutable: the keys it knows (as SHA-256 digests, compared in constant time)
and each key's `KeyPolicy`. It comes from the simple mode (API_KEYS, ADMIN_API_KEYS,
API_KEY_LIMITS) or from the keys file (components/keys_file.py), which is watched and
swapped in whole, so a request sees one policy from start to end.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

# vLLM's priority scheduling runs lower values first. A request may only lower its own
# priority (raise the number), never go above its key's class.
PRIORITY_CLASSES: dict[str, int] = {"interactive": 0, "standard": 5, "batch": 10}
BUDGET_PERIODS: dict[str, int] = {"hour": 3600, "day": 86400, "week": 7 * 86400}


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key of the simple mode, safe for logs and labels."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class KeyPolicy:
    id: str
    requests_per_minute: int | None = None  # None: the service's default
    tokens_per_minute: int | None = None
    max_inflight: int | None = None
    token_budget: int | None = None
    budget_period_s: int = 86400
    models: frozenset[str] | None = None  # None: every model
    priority: int = PRIORITY_CLASSES["standard"]
    priority_class: str = "standard"
    expires_at: float | None = None
    disabled: bool = False
    admin: bool = False

    def refusal(self, now: float) -> str | None:
        """Why this key may not be used now, or None."""
        if self.disabled:
            return "This API key is disabled."
        if self.expires_at is not None and now >= self.expires_at:
            return "This API key has expired."
        return None

    def may_use(self, *names: str) -> bool:
        return self.models is None or any(name in self.models for name in names)


@dataclass(frozen=True)
class Policy:
    digests: tuple[tuple[bytes, KeyPolicy], ...] = ()
    version: str = "none"
    loaded_at: float = field(default_factory=time.time)
    source: str = "env"

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @property
    def key_ids(self) -> list[str]:
        return [policy.id for _, policy in self.digests]

    def identify(self, presented: str) -> KeyPolicy | None:
        """The policy of a known key, else None. Compares against every key, no early exit."""
        candidate = digest(presented)
        found = None
        for known, policy in self.digests:
            if hmac.compare_digest(candidate, known):
                found = policy
        return found

    def by_id(self, kid: str) -> KeyPolicy | None:
        return next((policy for _, policy in self.digests if policy.id == kid), None)

    @classmethod
    def from_env(cls, keys: tuple[str, ...], admin_keys: tuple[str, ...] = (),
                 limits: dict[str, int] | None = None) -> Policy:
        """The simple mode. An admin key is an API key too: it authenticates every route."""
        limits = limits or {}
        every = dict.fromkeys((*keys, *admin_keys))
        entries = tuple(
            (digest(k), KeyPolicy(key_id(k), requests_per_minute=limits.get(k), admin=k in admin_keys))
            for k in every
        )
        version = hashlib.sha256(b"".join(d for d, _ in entries)).hexdigest()[:12] if entries else "none"
        return cls(entries, version=version, source="env")
