"""The keys file (KEYS_FILE, YAML): its schema, its parsing with one-line errors that name
the entry, and its reload without a restart.

A file is applied whole or not at all: empty, unreadable, not UTF-8, not YAML, invalid, or
holding two entries for one key or one id, it is refused and the last good policy stays
(`stale`); with no good policy ever loaded every request that needs a key gets 503
(`refusing`). A keys file never turns authentication off."""

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

from components.core.priority import DEFAULT_CLASS, ClassName
from components.edge.keys import BUDGET_PERIODS, KeyPolicy, Policy, digest

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
    priority: ClassName = DEFAULT_CLASS
    expires_at: datetime | None = None
    disabled: bool = False
    admin: bool = False
    # Keys with one cache_group share the engine's prefix cache; unset: the key alone.
    cache_group: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    ttft_slo_ms: int | None = Field(None, ge=1, le=3_600_000)  # unset: the class's (settings)
    sheddable: bool = False  # never waits in the fair queue: starts now or 503

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.sha256 is None) == (self.insecure_plaintext_key is None):
            raise ValueError("give exactly one of sha256 (hex digest of the key) or insecure_plaintext_key")
        return self

    @field_validator("sha256", "id", "cache_group", mode="before")
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
    def _not_empty(self) -> KeysFile:
        if not self.keys:
            raise ValueError("no keys: an empty keys file is refused (to refuse every key, keep the entries with "
                             "disabled: true)")
        return self


def parse(text: str, path: str) -> Policy:
    """Raises ValueError with one line naming the bad entry."""
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if raw is None:
        raise ValueError(f"{path}: the file is empty")
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
    try:  # one entry per key and per id (Policy refuses twins)
        return Policy(tuple(entries), version=version, source=path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _policy(entry: KeyEntry) -> KeyPolicy:
    return KeyPolicy(
        id=entry.id,
        requests_per_minute=entry.requests_per_minute,
        tokens_per_minute=entry.tokens_per_minute,
        max_inflight=entry.max_inflight,
        token_budget=entry.token_budget,
        budget_period_s=BUDGET_PERIODS[entry.budget_period],
        models=frozenset(entry.models) if entry.models is not None else None,
        priority_class=entry.priority,
        expires_at=entry.expires_at.astimezone(UTC).timestamp() if entry.expires_at else None,
        disabled=entry.disabled,
        admin=entry.admin,
        cache_group=entry.cache_group, ttft_slo_ms=entry.ttft_slo_ms, sheddable=entry.sheddable,
    )


def _describe(exc: ValidationError, raw: object) -> str:
    """The first problem, naming the entry by its id (or position) and never quoting a key."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    where = ".".join(str(part) for part in loc) or "file"
    if len(loc) >= 2 and loc[0] == "keys" and isinstance(loc[1], int) and isinstance(raw, dict):
        entries = raw.get("keys")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("id") if isinstance(entry, dict) else None
        field_name = ".".join(str(part) for part in loc[2:]) or "entry"
        where = f"key {name!r}" if name else f"keys[{loc[1]}]"
        where += f", field {field_name}"
    return f"{where}: {error['msg']}"


def _read(path: str) -> tuple[str, str | None, str]:
    """(the content's version, its text or None, why not); an unreadable file has one too."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable:{exc.errno}", None, f"{path}: cannot read it ({exc.strerror})"
    version = hashlib.sha256(raw).hexdigest()[:12]
    try:
        return version, raw.decode(), ""
    except UnicodeDecodeError:
        return version, None, f"{path}: not UTF-8 text"


PolicyStatus = Literal["ok", "stale", "refusing", "off"]


class PolicySource:
    """The current policy; with a keys file, polled and swapped when its content changes.

    Polling (content hash, every `interval_s`), not inotify: Kubernetes updates a Secret
    volume by swapping a symlinked directory, which file watchers miss or see half-done; a
    hash of what `open()` reads follows the symlinks as they are at that moment. New content
    is considered once two reads in a row agree, so a file caught mid-write by an in-place
    writer at one poll is never applied (docs/tenants.md asks for a rename all the same).
    """

    def __init__(self, policy: Policy, path: str | None = None, interval_s: float = 0.5,
                 on_reload_error: Callable[[], None] | None = None,
                 on_reload: Callable[[Policy], None] | None = None) -> None:
        if path is not None and policy.mode == "off":
            raise ValueError("a keys file never turns authentication off")
        self.current = policy
        self.path = path
        self.interval_s = interval_s
        self._on_error = on_reload_error or (lambda: None)
        self._on_reload = on_reload or (lambda policy: None)
        self._seen = policy.version
        self._pending: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> PolicySource:
        """Reads the file once; a bad file raises ValueError (one line): startup stops."""
        _, text, why = _read(path)
        if text is None:
            raise ValueError(f"KEYS_FILE {why}")
        return cls(parse(text, path), path, **kwargs)

    @classmethod
    def watch(cls, path: str, **kwargs: Any) -> PolicySource:
        """As `from_file`, but a bad file gives a source that refuses every request needing a
        key (503) until the file is fixed, instead of raising."""
        source = cls(Policy.unavailable(path), path, **kwargs)
        source.reload(settled=True)
        return source

    def reload(self, settled: bool = False) -> bool:
        """Read the file; swap the policy in once its new content is settled (read twice in a
        row, unless `settled`) and valid. False while the file is refused."""
        if self.path is None:
            return True
        version, text, why = _read(self.path)
        if version == self._seen:
            if self.last_error is not None:
                self._on_error()  # counted at every poll while the file stays refused: the alert holds
            return self.last_error is None
        if version != self._pending and not settled:
            self._pending = version  # first sight: wait for the next read to agree
            return self.last_error is None
        self._seen, self._pending = version, None
        try:
            if text is None:
                raise ValueError(why)
            policy = parse(text, self.path)
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the watcher lives on
            return self._failed(str(exc) if isinstance(exc, ValueError) else f"{self.path}: {exc.__class__.__name__}")
        self.current = policy
        self.last_error = None
        logger.info("keys file reloaded: version %s, %d keys", policy.version, len(policy.digests))
        self._on_reload(policy)
        return True

    def _failed(self, why: str) -> bool:
        self.last_error = why
        self._on_error()
        if self.current.mode == "unavailable":
            logger.error("keys file refused and no valid policy was ever loaded: every request that needs a key "
                         "gets 503 until it is fixed: %s", why)
        else:
            logger.error("keys file not reloaded, the last good policy (version %s) stays: %s",
                         self.current.version, why)
        return False

    @property
    def status(self) -> PolicyStatus:
        """Coarse, for the public /healthz: no path, no count, no error text, no key id."""
        if self.current.mode == "off":
            return "off"
        if self.current.mode == "unavailable":
            return "refusing"
        return "stale" if self.last_error is not None else "ok"

    def describe(self) -> dict[str, object]:
        """The details, for the admin view (/debug/runtime) only."""
        policy, loaded_at = self.current, datetime.fromtimestamp(self.current.loaded_at, UTC).isoformat()
        return {"status": self.status, "version": policy.version, "source": policy.source, "keys": len(policy.digests),
                "loaded_at": loaded_at, "last_reload_error": self.last_error}

    def start(self) -> None:
        if self.current.mode == "off":
            logger.warning("API_KEYS is empty: authentication is DISABLED, anyone who reaches the port can use the API")
        if self.path is not None and self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:  # a bug here must not freeze the policy for good
                logger.exception("keys file watcher")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def policy_source(settings: Any, on_reload_error: Callable[[], None]) -> PolicySource:
    """The keys file when KEYS_FILE is set, else the simple mode's fixed policy: keys off
    only when the deployment configured no key and does not require them."""
    auth, limits = settings.auth, settings.limits
    if auth.keys_file:
        return PolicySource.watch(auth.keys_file, interval_s=auth.keys_reload_s, on_reload_error=on_reload_error)
    policy = Policy.from_env(auth.api_keys, auth.admin_api_keys, limits.api_key_limits)
    if policy.mode == "off" and auth.require_api_keys:  # settings stop this at startup; closed regardless
        policy = Policy.unavailable("env")
    return PolicySource(policy)


def check_keys_file(path: str | None) -> None:
    """At import of the service: a bad keys file stops `bentoml serve` with one line."""
    if not path:
        return
    try:
        PolicySource.from_file(path)
    except ValueError as exc:
        print(f"invalid keys file: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
