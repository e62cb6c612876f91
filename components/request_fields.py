"""Reading a request's fields by what its model declares (vLLM's pydantic request models).

vLLM's models keep unknown JSON keys as attributes, so `getattr`/`hasattr` would let a
client's extra `messages`, `input` or `max_output_tokens` decide how a request is counted,
capped or aborted. Everything that decides reads declared fields only.
"""

from __future__ import annotations

from typing import Any


def declared(body: Any, name: str) -> Any:
    """A field of the request's model; None when the model does not declare it."""
    return getattr(body, name, None) if name in type(body).model_fields else None


def request_kind(body: Any) -> str:
    """"chat", "responses" or "completion", by the fields its model declares."""
    fields = type(body).model_fields
    return "chat" if "messages" in fields else "responses" if "input" in fields else "completion"
