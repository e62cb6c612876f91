"""The tenant policy fails closed, as a property (issue #24, rules 4 and 6): whatever a keys
file becomes (generated entries, duplicates, empties, garbage bytes, truncations of a valid
file), the policy in force is the new valid one or the previous one, never "auth off"; a
file read half-written at one poll is never applied; the public /healthz names no tenant."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from components.edge.health import Snapshot, health_document
from components.edge.keys import Policy
from components.edge.keys_file import PolicySource, parse

POOL = [f"sk-pool-key-{i}" for i in range(4)]
IDS = ["team-a", "team-b", "team-c", "ops"]
BASE = "keys:\n" + "".join(f"  - id: base-{i}\n    insecure_plaintext_key: sk-base-key-{i}\n    disabled: {i == 1}\n"
                           for i in range(3))


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@st.composite
def entry(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(POOL))
    secret = draw(st.sampled_from(["sha256", "SHA256", "plain"]))
    item: dict[str, Any] = {"id": draw(st.sampled_from(IDS))}
    if secret == "plain":
        item["insecure_plaintext_key"] = key
    else:
        item["sha256"] = sha(key).upper() if secret == "SHA256" else sha(key)
    if draw(st.booleans()):
        item["disabled"] = draw(st.booleans())
    if draw(st.booleans()):
        item["admin"] = True
    if draw(st.booleans()):
        item["cache_group"] = draw(st.sampled_from(["tenant-x", "bad group!", ""]))
    return item


def dumped(entries: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump({"keys": entries}, sort_keys=False).encode()


EMPTIES = [b"", b"\n", b"keys: []\n", b"keys:\n", b"keys: null\n", b"{}\n", b"---\n", b"...\n", b"keys: {}\n"]
contents = st.one_of(
    st.lists(entry(), min_size=1, max_size=5).map(dumped),
    st.sampled_from(EMPTIES),
    st.binary(max_size=200),
    st.tuples(st.lists(entry(), min_size=1, max_size=5).map(dumped), st.floats(0, 1)).map(
        lambda pair: pair[0][: int(len(pair[0]) * pair[1])]),
    st.just(BASE.encode()),
)


def same(a: Policy, b: Policy) -> bool:
    return a.digests == b.digests and a.mode == b.mode


def parsed(content: bytes) -> Policy | None:
    try:
        return parse(content.decode(), "keys.yaml")
    except (ValueError, UnicodeDecodeError):
        return None


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.lists(contents, min_size=1, max_size=5), st.booleans())
def test_the_policy_is_the_new_valid_one_or_the_previous_one_never_off(steps: list[bytes], start_good: bool) -> None:
    errors: list[int] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys.yaml"
        if start_good:
            path.write_text(BASE)
        source = PolicySource.watch(str(path), on_reload_error=lambda: errors.append(1))
        assert source.current.enabled and source.status == ("ok" if start_good else "refusing")
        for content in steps:
            before = source.current
            path.write_bytes(content)
            source.reload()
            source.reload()  # the second read agrees with the first: the content is settled
            now, new = source.current, parsed(content)
            assert now.enabled and now.mode != "off"
            assert now is before or (new is not None and same(now, new)), content
            if new is None:  # refused as a whole: the last good policy stays, and it says so
                assert now is before and source.status in ("stale", "refusing") and errors
            else:
                assert source.status == "ok" and len(new.digests) >= 1
                ids = [p.id for _, p in new.digests]
                digests = [d for d, _ in new.digests]
                assert len(set(ids)) == len(ids) and len(set(digests)) == len(digests)
            if source.status == "refusing":
                assert now.mode == "unavailable" and all(now.identify(k) is None for k in POOL)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(entry(), min_size=1, max_size=5), st.floats(0, 1))
def test_a_file_read_half_written_at_one_poll_is_never_applied(entries: list[dict[str, Any]], cut: float) -> None:
    """An in-place writer caught mid-write: one poll reads a prefix, the next the whole file."""
    full = dumped(entries)
    prefix = full[: int(len(full) * cut)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys.yaml"
        path.write_text(BASE)
        source = PolicySource.watch(str(path))
        seen = [source.current]
        for content in (prefix, full, full):
            path.write_bytes(content)
            source.reload()
            seen.append(source.current)
    half, whole = parsed(prefix), parsed(full)
    if half is not None and (whole is None or not same(half, whole)):
        assert not any(same(policy, half) for policy in seen)
    assert same(seen[-1], whole) if whole is not None else seen[-1] is seen[0]


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.sampled_from(["ok", "stale", "refusing", "off"]), st.text(max_size=40))
def test_the_public_healthz_names_no_tenant(status: str, noise: str) -> None:
    document = health_document(Snapshot(loaded=True, engine_alive=True, draining=False, breaker="closed",
                                        keys_policy=status), "2026-01-01T00:00:00Z")
    assert document["keys_policy"] == status
    text = json.dumps(document)
    for word in ("keys.yaml", "source", "last_reload_error", "version", "key_ids", "\"keys\""):
        assert word not in text
    assert document["status"] == ("degraded" if status == "refusing" else "healthy")
