from __future__ import annotations

from components.auth import presented_key
from components.keys import Policy, key_id
from components.keys_file import PolicySource


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
