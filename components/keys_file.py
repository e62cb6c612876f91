"""The keys file (KEYS_FILE, YAML): its schema, its parsing with one-line errors that name
the entry, and its reload without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.keys import BUDGET_PERIODS, PRIORITY_CLASSES, KeyPolicy, Policy, digest

logger = logging.getLogger(__name__)


class KeyEntry(BaseModel):
    """One key of the keys file. Limits left out fall back to the service-wide settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    name: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    # For local development only: the key in clear text. Logged as a warning at each load.
    insecure_plaintext_key: str | None = Field(None, min_length=8)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_inflight: int | None = Field(None, ge=1)
    token_budget: int | None = Field(None, ge=1)
    budget_period: Literal["hour", "day", "week"] = "day"
    models: tuple[str, ...] | None = None
    priority: Literal["interactive", "standard", "batch"] = "standard"
    expires_at: datetime | None = None
    disabled: bool = False
    admin: bool = False

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.sha256 is None) == (self.insecure_plaintext_key is None):
            raise ValueError("give exactly one of sha256 (hex digest of the key) or insecure_plaintext_key")
        return self

    @field_validator("sha256", "id", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        # YAML reads an all-digit digest as a number and `off`/`no` as false: ask for quotes.
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a quoted string in the YAML file")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...]

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        seen: set[str] = set()
        for entry in self.keys:
            if entry.id in seen:
                raise ValueError(f"key id {entry.id!r} appears twice")
            seen.add(entry.id)
        return self


def parse(text: str, path: str) -> Policy:
    """Raises ValueError with one line naming the bad entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    try:
        parsed = KeysFile.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: {_describe(exc, raw)}") from None
    entries = []
    for entry in parsed.keys:
        if entry.insecure_plaintext_key is not None:
            logger.warning("keys file: key %r is given in plain text (insecure_plaintext_key): development only",
                           entry.id)
            secret = digest(entry.insecure_plaintext_key)
        else:
            secret = bytes.fromhex(entry.sha256 or "")
        entries.append((secret, _policy(entry)))
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Policy(tuple(entries), version=version, source=path)


def _policy(entry: KeyEntry) -> KeyPolicy:
    return KeyPolicy(
        id=entry.id,
        requests_per_minute=entry.requests_per_minute,
        tokens_per_minute=entry.tokens_per_minute,
        max_inflight=entry.max_inflight,
        token_budget=entry.token_budget,
        budget_period_s=BUDGET_PERIODS[entry.budget_period],
        models=frozenset(entry.models) if entry.models is not None else None,
        priority=PRIORITY_CLASSES[entry.priority],
        priority_class=entry.priority,
        expires_at=entry.expires_at.astimezone(UTC).timestamp() if entry.expires_at else None,
        disabled=entry.disabled,
        admin=entry.admin,
    )


def _describe(exc: ValidationError, raw: object) -> str:
    """The first problem, naming the entry by its id (or position) and never quoting a key."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    where = ".".join(str(part) for part in loc) or "file"
    if len(loc) >= 2 and loc[0] == "keys" and isinstance(loc[1], int) and isinstance(raw, dict):
        entries = raw.get("keys") or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        name = entry.get("id") if isinstance(entry, dict) else None
        field_name = ".".join(str(part) for part in loc[2:]) or "entry"
        where = f"key {name!r}" if name else f"keys[{loc[1]}]"
        where += f", field {field_name}"
    return f"{where}: {error['msg']}"


class PolicySource:
    """The current policy; with a keys file, polled and swapped when its content changes.

    Polling (content hash, every `interval_s`), not inotify: Kubernetes updates a Secret
    volume by swapping a symlinked directory, which file watchers miss or see half-done; a
    hash of what `open()` reads follows the symlinks as they are at that moment.
    """

    def __init__(self, policy: Policy, path: str | None = None, interval_s: float = 0.5,
                 on_reload_error: Callable[[], None] | None = None,
                 on_reload: Callable[[Policy], None] | None = None) -> None:
        self.current = policy
        self.path = path
        self.interval_s = interval_s
        self._on_error = on_reload_error or (lambda: None)
        self._on_reload = on_reload or (lambda policy: None)
        self._seen = policy.version
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @classmethod
    def from_file(cls, path: str, **kwargs: object) -> PolicySource:
        """Reads the file once; a bad file stops startup (ValueError, one line)."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"KEYS_FILE {path}: cannot read it ({exc.strerror})") from None
        return cls(parse(text, path), path, **kwargs)  # type: ignore[arg-type]

    def reload(self) -> bool:
        """Read the file; swap the policy if its content changed. False on a bad file."""
        if self.path is None:
            return True
        try:
            text = Path(self.path).read_text()
        except OSError as exc:
            return self._failed(f"cannot read it ({exc.strerror})")
        version = hashlib.sha256(text.encode()).hexdigest()[:12]
        if version == self._seen:
            return True
        self._seen = version
        try:
            policy = parse(text, self.path)
        except ValueError as exc:
            return self._failed(str(exc))
        self.current = policy
        self.last_error = None
        logger.info("keys file reloaded: version %s, %d keys", policy.version, len(policy.digests))
        self._on_reload(policy)
        return True

    def _failed(self, why: str) -> bool:
        self.last_error = why
        self._on_error()
        logger.error("keys file not reloaded, the last good policy (version %s) stays: %s", self.current.version, why)
        return False

    def describe(self) -> dict[str, object]:
        policy = self.current
        return {"version": policy.version, "source": policy.source, "keys": len(policy.digests),
                "loaded_at": datetime.fromtimestamp(policy.loaded_at, UTC).isoformat(),
                "last_reload_error": self.last_error}

    def start(self) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.reload)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def policy_source(settings: Any, on_reload_error: Callable[[], None]) -> PolicySource:
    """The keys file when KEYS_FILE is set, else the simple mode's fixed policy."""
    auth, limits = settings.auth, settings.limits
    if auth.keys_file:
        return PolicySource.from_file(auth.keys_file, interval_s=auth.keys_reload_s, on_reload_error=on_reload_error)
    return PolicySource(Policy.from_env(auth.api_keys, auth.admin_api_keys, limits.api_key_limits))


def check_keys_file(path: str | None) -> None:
    """At import of the service: a bad keys file stops `bentoml serve` with one line."""
    if not path:
        return
    try:
        PolicySource.from_file(path)
    except ValueError as exc:
        print(f"invalid keys file: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
