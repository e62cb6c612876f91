from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest

from components.core.priority import CLASSES
from components.edge.keys import KeyPolicy, Policy, digest
from components.edge.keys_file import PolicySource, parse


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


GOOD = textwrap.dedent(f"""
    keys:
      - id: team-a
        name: Team A
        sha256: {sha("sk-team-a-secret")}
        requests_per_minute: 120
        tokens_per_minute: 400
        max_inflight: 2
        token_budget: 1000
        budget_period: hour
        models: [gpt-4]
        priority: batch
        admin: true
      - id: old
        sha256: {sha("sk-old-secret")}
        expires_at: 2020-01-01T00:00:00Z
      - id: paused
        sha256: {sha("sk-off-secret")}
        disabled: true
      - id: dev
        insecure_plaintext_key: sk-dev-plain
""")


def test_a_keys_file_gives_each_key_its_policy() -> None:
    policy = parse(GOOD, "keys.yaml")
    team = policy.identify("sk-team-a-secret")
    assert team is not None and team.id == "team-a" and team.admin
    assert (team.requests_per_minute, team.tokens_per_minute, team.max_inflight) == (120, 400, 2)
    assert (team.token_budget, team.budget_period_s, team.priority) == (1000, 3600, CLASSES["batch"])
    assert team.may_use("gpt-4") and not team.may_use("other")
    assert policy.identify("sk-dev-plain").id == "dev"  # type: ignore[union-attr]
    assert policy.identify("sk-unknown") is None
    old, off = policy.identify("sk-old-secret"), policy.identify("sk-off-secret")
    assert old is not None and old.refusal(now=1e10) == "This API key has expired."
    assert off is not None and off.refusal(now=0) == "This API key is disabled."
    assert team.refusal(now=1e10) is None
    assert policy.version == hashlib.sha256(GOOD.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("keys:\n  - id: a\n    sha256: nothex\n", "key 'a', field sha256"),
        ("keys:\n  - id: a\n    sha256: '" + "0" * 64 + "'\n    requests_per_minute: 0\n", "field requests_per_minute"),
        ("keys:\n  - id: a\n    sha256: " + "1" * 64 + "\n", "quoted string"),
        ("keys:\n  - id: off\n    insecure_plaintext_key: sk-long-enough\n", "keys[0], field id: Value error, must be"),
        ("keys:\n  - id: a\n", "exactly one of sha256"),
        ("keys:\n  - id: a\n    insecure_plaintext_key: sk-long-enough\n    colour: red\n", "field colour"),
        ("keys: [\n", "not valid YAML"),
        ("keys:\n  - id: a\n    insecure_plaintext_key: sk-long-one\n"
         "  - id: a\n    insecure_plaintext_key: sk-long-two\n", "appears twice"),
        ("keys:\n  - id: a\n    insecure_plaintext_key: sk-long-one\n    expires_at: 2027-01-01T00:00:00\n",
         "time zone"),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_entry(text: str, named: str) -> None:
    with pytest.raises(ValueError, match="keys.yaml") as info:
        parse(text, "keys.yaml")
    message = str(info.value)
    assert named in message and "\n" not in message
    assert "sk-long" not in message  # never a key


def test_the_simple_mode_keeps_ids_limits_and_admins() -> None:
    policy = Policy.from_env(("sk-a-0123",), ("sk-admin-0123",), {"sk-a-0123": 7})
    a, admin = policy.identify("sk-a-0123"), policy.identify("sk-admin-0123")
    assert a is not None and a.requests_per_minute == 7 and not a.admin
    assert admin is not None and admin.admin and admin.id.startswith("key-")
    assert not Policy.from_env(()).enabled


def test_reload_swaps_on_change_keeps_the_last_good_policy_and_counts_errors(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    errors: list[int] = []
    source = PolicySource.from_file(str(path), on_reload_error=lambda: errors.append(1))
    first = source.current
    assert source.reload() and source.current is first  # unchanged content: nothing to do
    path.write_text("keys:\n  - id: new\n    insecure_plaintext_key: sk-new-key-1\n")
    assert source.reload() and source.current is first  # first sight: waits for a second read to agree
    assert source.reload() and source.current.identify("sk-new-key-1") is not None
    assert source.current.identify("sk-team-a-secret") is None and source.status == "ok"
    good = source.current
    path.write_text("keys: [\n")
    assert source.reload() and errors == []
    assert not source.reload() and source.current is good and errors == [1] and source.status == "stale"
    # Counted at every poll while it stays refused (the alert holds), logged once.
    assert not source.reload() and errors == [1, 1]
    path.write_text("keys:\n  - id: new\n    insecure_plaintext_key: sk-new-key-1\n")
    assert not source.reload() and source.reload() and source.status == "ok" and errors == [1, 1]


def test_reload_follows_a_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes writes a Secret into a new timestamped directory and renames the
    `..data` symlink to it; the mounted file is a symlink through `..data`."""
    first, second = tmp_path / "..2026_1", tmp_path / "..2026_2"
    first.mkdir()
    second.mkdir()
    (first / "keys.yaml").write_text("keys:\n  - id: one\n    insecure_plaintext_key: sk-one-key-1\n")
    (second / "keys.yaml").write_text("keys:\n  - id: two\n    insecure_plaintext_key: sk-two-key-2\n")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "keys.yaml").symlink_to("..data/keys.yaml")
    source = PolicySource.from_file(str(tmp_path / "keys.yaml"))
    assert source.current.identify("sk-one-key-1") is not None
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap
    assert source.reload() and source.reload()
    assert source.current.identify("sk-two-key-2") is not None and source.current.identify("sk-one-key-1") is None


def test_an_unreadable_keys_file_stops_startup_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        PolicySource.from_file(str(tmp_path / "missing.yaml"))


# --- fail closed (issue #24, rule 4) --------------------------------------------------

EMPTIED = ["", "\n", "keys: []\n", "keys:\n", "keys: null\n", "{}\n", "---\n"]


@pytest.mark.parametrize("text", EMPTIED)
def test_an_empty_keys_file_is_refused_and_never_turns_auth_off(tmp_path: Path, text: str) -> None:
    """Seen: `keys: []` was applied as an empty policy, and an empty policy was "keys off"."""
    with pytest.raises(ValueError, match="keys.yaml") as info:
        parse(text, "keys.yaml")
    assert "\n" not in str(info.value)
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    source = PolicySource.from_file(str(path))
    good = source.current
    path.write_text(text)
    source.reload()
    assert not source.reload() and source.current is good and source.current.enabled
    assert source.status == "stale" and source.current.identify("sk-team-a-secret") is not None


@pytest.mark.parametrize("twin", [
    f"sha256: '{sha('sk-team-a-secret')}'",
    f"sha256: '{sha('sk-team-a-secret').upper()}'",
    "insecure_plaintext_key: sk-team-a-secret",
])
def test_two_entries_for_one_key_refuse_the_whole_file(tmp_path: Path, twin: str) -> None:
    """Seen: a `disabled` twin placed above the original was accepted and the original (the
    last entry) won, so the key stayed enabled."""
    doubled = f"keys:\n  - id: twin\n    {twin}\n    disabled: true\n" + GOOD.split("keys:\n", 1)[1]
    with pytest.raises(ValueError) as info:
        parse(doubled, "keys.yaml")
    message = str(info.value)
    assert "'twin' and 'team-a' are one key" in message and "sk-team-a" not in message and "\n" not in message
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD.replace("id: dev", "id: dev-before"))
    source = PolicySource.from_file(str(path))
    good = source.current
    path.write_text(doubled)
    source.reload()
    assert not source.reload() and source.current is good and "one key" in (source.last_error or "")


def test_a_policy_holds_one_entry_per_key_and_per_id_however_built() -> None:
    one = KeyPolicy("a")
    with pytest.raises(ValueError, match="one key"):
        Policy(((digest("k1"), one), (digest("k1"), KeyPolicy("b"))))
    with pytest.raises(ValueError, match="appears twice"):
        Policy(((digest("k1"), one), (digest("k2"), KeyPolicy("a"))))
    with pytest.raises(ValueError, match="holds no keys"):
        Policy(((digest("k1"), one),), mode="off")
    assert Policy().enabled and Policy().identify("k1") is None  # an empty policy lets no one in
    assert not Policy.from_env(()).enabled and Policy.unavailable("x").enabled
    with pytest.raises(ValueError, match="never turns authentication off"):
        PolicySource(Policy.from_env(()), "keys.yaml")


def test_no_valid_policy_at_start_refuses_until_the_file_is_fixed(tmp_path: Path) -> None:
    errors: list[int] = []
    path = tmp_path / "keys.yaml"
    source = PolicySource.watch(str(path), on_reload_error=lambda: errors.append(1))
    assert source.status == "refusing" and source.current.mode == "unavailable" and source.current.enabled
    assert errors == [1] and "cannot read it" in (source.last_error or "")
    path.write_text("keys: []\n")
    source.reload()
    assert not source.reload() and source.status == "refusing"
    path.write_text(GOOD)
    source.reload()
    assert source.reload() and source.status == "ok" and source.current.identify("sk-dev-plain") is not None
    path.unlink()  # unreadable later: the last good policy stays
    source.reload()
    assert not source.reload() and source.status == "stale" and source.current.identify("sk-dev-plain")


def test_garbage_bytes_are_refused_and_the_watcher_lives_on(tmp_path: Path) -> None:
    """Seen: bytes that are not UTF-8 raised out of reload(), which ended the watch task."""
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    source = PolicySource.from_file(str(path))
    good = source.current
    path.write_bytes(b"keys:\n  - id: \xff\xfe\n")
    source.reload()
    assert not source.reload() and source.current is good and "not UTF-8" in (source.last_error or "")
    path.write_bytes(b"[" * 5000)
    source.reload()
    assert not source.reload() and source.current is good


def test_a_half_written_file_in_place_is_never_applied(tmp_path: Path) -> None:
    """Read at one poll mid-write, even a prefix that validates (it drops the last entry's
    `disabled: true` here) is not applied: new content waits for a second read to agree."""
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    source = PolicySource.from_file(str(path))
    good = source.current
    half = GOOD[: GOOD.index("    disabled: true")]
    assert parse(half, "k").identify("sk-off-secret").refusal(0) is None  # type: ignore[union-attr]
    path.write_text(half)
    source.reload()
    assert source.current is good
    path.write_text(GOOD.replace("Team A", "Team A2"))
    source.reload()
    source.reload()
    paused = source.current.identify("sk-off-secret")
    assert paused is not None and paused.disabled and source.current is not good


def test_cache_group_is_an_optional_short_token() -> None:
    policy = parse("keys:\n  - id: a\n    insecure_plaintext_key: sk-one-key-1\n    cache_group: tenant-1\n"
                   "  - id: b\n    insecure_plaintext_key: sk-two-key-2\n", "k")
    a, b = policy.identify("sk-one-key-1"), policy.identify("sk-two-key-2")
    assert a is not None and a.cache_group == "tenant-1" and a.cache_scope == "group:tenant-1"
    assert b is not None and b.cache_group is None and b.cache_scope == "key:b"
    for bad in ("''", "'two words'", "'" + "x" * 65 + "'", "12", "[a]"):
        with pytest.raises(ValueError, match="field cache_group"):
            parse(f"keys:\n  - id: a\n    insecure_plaintext_key: sk-one-key-1\n    cache_group: {bad}\n", "k")
