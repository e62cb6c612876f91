"""docs/settings.md is what the settings module says: every setting, its real default."""

from __future__ import annotations

from pathlib import Path

from harness.settings_reference import DESCRIPTIONS, GROUPS, reference, render_default, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_has_a_meaning_and_no_meaning_is_stale() -> None:
    names = {info.alias for _, group in GROUPS for info in group.model_fields.values()}
    assert names == set(DESCRIPTIONS)


def test_the_committed_reference_is_current() -> None:
    assert (ROOT / "docs/settings.md").read_text() == reference(), \
        "run: .venv/bin/python -m harness.settings_reference > docs/settings.md"


def test_defaults_are_the_models_own() -> None:
    text = (ROOT / "docs/settings.md").read_text()
    for _, group in GROUPS:
        for info in group.model_fields.values():
            default = render_default(info.get_default(call_default_factory=True))
            assert f"| `{info.alias}` | `{default}` |" in text
    assert ("Model and engine", "MAX_NUM_SEQS", "32") in [row[:3] for row in settings_table()]
