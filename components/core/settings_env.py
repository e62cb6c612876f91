"""Settings from the environment: read once at startup into `Settings` (components/
settings.py), with one readable line for whatever is wrong; and the variables vLLM and
Hugging Face read from the process environment, exported before the engine starts."""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from components.core.settings import (
    ApiSettings,
    AuthSettings,
    EngineSettings,
    LimitSettings,
    ResilienceSettings,
    ServerSettings,
    Settings,
    split_csv,
)


class SettingsError(SystemExit):
    """Raised with one readable line; as a SystemExit it stops startup without a traceback."""


def _describe(group: type[BaseSettings], exc: ValidationError) -> str:
    # An error's loc names the field by its alias (the variable) or by its name.
    fields = {**group.model_fields, **{info.alias: info for info in group.model_fields.values() if info.alias}}
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings: its message names them
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        info = fields.get(field)
        name = info.alias if info and info.alias else field
        raw = os.environ.get(name)
        secret = info is not None and info.repr is False
        shown = f"={raw!r}" if raw is not None and len(raw) < 80 and not secret else ""
        message = _scrub(error["msg"], raw) if secret and raw else error["msg"]
        problems.append(f"{name}{shown}: {message}")
    return "invalid setting " + "; ".join(problems)


def _scrub(message: str, raw: str) -> str:
    """`message` without any item of a secret value, or any key of its `key:value` items."""
    pieces = {piece for item in split_csv(raw) for piece in (item, item.rpartition("=" if "=" in item else ":")[0])}
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 4:
            message = message.replace(piece, "***")
    return message


def load_settings() -> Settings:
    groups: dict[str, BaseSettings] = {}
    for key, group in (
        ("engine", EngineSettings),
        ("api", ApiSettings),
        ("auth", AuthSettings),
        ("limits", LimitSettings),
        ("resilience", ResilienceSettings),
        ("server", ServerSettings),
    ):
        try:
            groups[key] = group()
        except ValidationError as exc:
            message = _describe(group, exc)
            print(message, file=sys.stderr)
            raise SettingsError(message) from None
    return Settings(**groups)  # type: ignore[arg-type]


def validate_settings() -> Settings:
    """Exit with one line (status 2) if any setting is invalid."""
    try:
        return load_settings()
    except SettingsError:
        raise SystemExit(2) from None


def export_engine_environment(engine: EngineSettings, engine_env: dict[str, str], cache_root: str | None) -> None:
    """vLLM and Hugging Face read these from the process environment, not from arguments."""
    os.environ["VLLM_CACHE_ROOT"] = cache_root or engine.cache_dir
    if engine.hf_home:
        os.environ["HF_HOME"] = engine.hf_home
    os.environ.update(engine_env)
    os.environ.pop("VLLM_ATTENTION_BACKEND", None)  # vLLM 0.32 no longer reads it: we pass an engine argument
