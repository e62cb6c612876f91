"""Tenant policy: who may call, with which limits, on which models, at which priority.

A `Policy` is immutable: the keys it knows (as SHA-256 digests, compared in constant time)
and each key's `KeyPolicy`. It comes from the simple mode (API_KEYS, ADMIN_API_KEYS,
API_KEY_LIMITS) or from the keys file (components/edge/keys_file.py), which is watched and
swapped in whole, so a request sees one policy from start to end.

Fail closed by construction: a policy's `mode` is `keys` unless made otherwise, so an empty
policy lets no one in; `off` (no authentication) comes only from the simple mode with no key
configured at all, and `unavailable` (no valid policy was ever loaded) refuses every request
that needs a key with 503. A policy never holds two entries for one digest or one id.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Literal

from components.core.priority import CLASSES, DEFAULT_CLASS, ClassName

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
    priority_class: ClassName = DEFAULT_CLASS
    expires_at: float | None = None
    disabled: bool = False
    admin: bool = False
    # Keys of one group may share the engine's prefix cache; None: the key alone.
    cache_group: str | None = None
    ttft_slo_ms: int | None = None  # its time-to-first-token objective; None: its class's
    sheddable: bool = False  # its requests start now or are refused, never wait

    @property
    def priority(self) -> int:
        """The level of this key's class: its requests' floor (one may lower its own, never
        raise it above this)."""
        return CLASSES[self.priority_class]

    @property
    def cache_scope(self) -> str:
        """Whose prefix cache this key reads: its group's, else its own (the prefixes keep a
        group named like a key's id apart from that key)."""
        return f"group:{self.cache_group}" if self.cache_group is not None else f"key:{self.id}"

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
    mode: Literal["keys", "off", "unavailable"] = "keys"

    def __post_init__(self) -> None:
        # Two entries for one key would let one silently win (a `disabled` twin above the
        # original did not disable it): refused, however the policy was built.
        ids: set[str] = set()
        owners: dict[bytes, str] = {}
        for secret, policy in self.digests:
            if policy.id in ids:
                raise ValueError(f"key id {policy.id!r} appears twice")
            if secret in owners:
                raise ValueError(f"keys {owners[secret]!r} and {policy.id!r} are one key (the same secret): "
                                 "two entries for one key are refused")
            ids.add(policy.id)
            owners[secret] = policy.id
        if self.mode != "keys" and self.digests:
            raise ValueError(f"a policy in mode {self.mode!r} holds no keys")

    @classmethod
    def unavailable(cls, source: str) -> Policy:
        """No valid policy was ever loaded: every request that needs a key gets 503."""
        return cls(source=source, mode="unavailable")

    @property
    def enabled(self) -> bool:
        """Whether requests need a key: always, unless the deployment configured none."""
        return self.mode != "off"

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
        """The simple mode. An admin key is an API key too: it authenticates every route.
        No key at all is the only way to `off`; the caller decides whether that is allowed."""
        limits = limits or {}
        every = dict.fromkeys((*keys, *admin_keys))
        entries = tuple(
            (digest(k), KeyPolicy(key_id(k), requests_per_minute=limits.get(k), admin=k in admin_keys))
            for k in every
        )
        if not entries:
            return cls(source="env", mode="off")
        version = hashlib.sha256(b"".join(d for d, _ in entries)).hexdigest()[:12]
        return cls(entries, version=version, source="env")
