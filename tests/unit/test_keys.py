from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest

from components.keys import PRIORITY_CLASSES, Policy
from components.keys_file import PolicySource, parse


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
    assert (team.token_budget, team.budget_period_s, team.priority) == (1000, 3600, PRIORITY_CLASSES["batch"])
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
        ("keys:\n  - id: a\n    insecure_plaintext_key: sk-long-one\n  - id: a\n    insecure_plaintext_key: sk-long-two\n",
         "appears twice"),
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
    assert source.reload() and source.current.identify("sk-new-key-1") is not None
    assert source.current.identify("sk-team-a-secret") is None
    good = source.current
    path.write_text("keys: [\n")
    assert not source.reload() and source.current is good and errors == [1]
    assert not source.reload() or errors == [1]  # the same broken content is reported once
    assert errors == [1]


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
    assert source.reload()
    assert source.current.identify("sk-two-key-2") is not None and source.current.identify("sk-one-key-1") is None


def test_an_unreadable_keys_file_stops_startup_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        PolicySource.from_file(str(tmp_path / "missing.yaml"))
