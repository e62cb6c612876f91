from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from components.edge.auth import AuthMiddleware, presented_key
from components.edge.keys import Policy, key_id
from components.edge.keys_file import PolicySource


def test_keys_are_kept_as_digests_and_identified() -> None:
    store = Policy.from_env(("sk-a", "sk-b"))
    assert "sk-a" not in repr(store)
    assert store.identify("sk-a").id == key_id("sk-a")  # type: ignore[union-attr]
    assert store.identify("sk-b").id == key_id("sk-b")  # type: ignore[union-attr]
    assert store.identify("sk-A") is None
    assert store.identify("") is None
    assert not PolicySource(Policy.from_env(())).current.enabled


def test_key_id_is_stable_and_does_not_contain_the_key() -> None:
    assert key_id("sk-secret") == key_id("sk-secret")
    assert "secret" not in key_id("sk-secret") and key_id("sk-secret").startswith("key-")


def test_presented_key_from_bearer_or_x_api_key() -> None:
    assert presented_key({"headers": [(b"authorization", b"Bearer sk-1")]}) == "sk-1"
    assert presented_key({"headers": [(b"authorization", b"bearer  sk-1 ")]}) == "sk-1"
    assert presented_key({"headers": [(b"x-api-key", b"sk-2")]}) == "sk-2"
    assert presented_key({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert presented_key({"headers": []}) is None


# --- fail closed (issue #24, rule 4) --------------------------------------------------


def answered(app: Any, path: str, key: str | None = None) -> tuple[int, dict[str, Any], bool]:
    """(status, JSON body, whether the app behind was reached) of one GET through `app`."""
    sent: list[dict[str, Any]] = []
    reached: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers, "query_string": b""}
    asyncio.run(AuthMiddleware(inner, app)(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), bool(reached)


ROUTES = ["/v1/models", "/v1/chat/completions", "/admin/usage", "/debug/runtime", "/metrics"]


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sampled_from(ROUTES), st.one_of(st.none(), st.sampled_from(["sk-a-0123", "sk-admin-0123"]), st.text()))
def test_no_valid_policy_refuses_every_route_that_needs_a_key_with_503(path: str, key: str | None) -> None:
    source = PolicySource(Policy.unavailable("keys.yaml"), "keys.yaml")
    status, body, reached = answered(source, path, key.strip() or None if key is not None else None)
    if path == "/metrics":  # public unless PROTECT_METRICS
        assert status == 200 and reached
        return
    assert (status, body["error"]["code"], body["error"]["type"], reached) == (
        503, "auth_policy_unavailable", "server_error", False)
    assert "keys.yaml" not in body["error"]["message"]


def test_probes_stay_open_while_no_policy_is_loaded_and_an_empty_policy_lets_no_one_in() -> None:
    unavailable = PolicySource(Policy.unavailable("keys.yaml"), "keys.yaml")
    for probe in ("/healthz", "/livez", "/readyz"):
        assert answered(unavailable, probe)[0] == 200
    empty = PolicySource(Policy(source="keys.yaml"), "keys.yaml")
    for path in ROUTES[:4]:
        status, body, reached = answered(empty, path)
        assert (status, body["error"]["code"], reached) == (401, "invalid_api_key", False)
    assert answered(PolicySource(Policy.from_env(())), "/admin/usage")[2]  # keys off: only with no key configured
