"""What /debug/runtime may show of the settings: secrets replaced, credentials out of URIs."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel


def redact_group(group: BaseModel) -> dict[str, Any]:
    shown = group.model_dump()
    for name, info in type(group).model_fields.items():
        value = shown[name]
        if isinstance(value, str) and "://" in value:
            shown[name] = redact_uri(value)
        elif info.repr is False:
            shown[name] = f"<{len(value)} keys>" if isinstance(value, tuple | list | dict) else "<redacted>"
    return shown


# Query parameters that carry credentials (redis-py reads `password` from the query).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|cred|sig", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """The URI with its user info, secret query values and fragment replaced by ***.

    Everything up to the last '@' counts as user info, even past a '/', '?' or '#': a
    password with such a character unescaped must not show in part.
    """
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest, hashed, _ = rest.partition("#")
    path, asked, query = rest.partition("?")
    if asked:
        params = []
        for param in query.split("&"):
            name, equals, _ = param.partition("=")
            params.append(f"{name}=***" if equals and _SECRET_PARAM.search(name) else param)
        query = "&".join(params)
    return scheme + sep + path + asked + query + ("#***" if hashed else "")


def redacted(settings: BaseModel) -> dict[str, Any]:
    """For /debug/runtime: every group of the settings, each secret field (repr=False)
    replaced by a count or a marker, and credentials taken out of every URI."""
    return {name: redact_group(getattr(settings, name)) for name in type(settings).model_fields}
