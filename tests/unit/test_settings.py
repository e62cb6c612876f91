from __future__ import annotations

import pytest

from components.core.settings_env import SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_PATH", "MAX_NUM_SEQS", "MAX_MODEL_LEN", "GPU_MEMORY_UTILIZATION", "MODEL_ALIASES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.engine.max_model_len == 4096
    assert settings.engine.max_num_seqs == 32
    assert settings.engine.gpu_memory_utilization == 0.9
    assert settings.engine.cache_dir == "/tmp/vllm_cache"
    assert settings.engine.model_path is None
    assert settings.api.model_aliases == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_NUM_SEQS", "abc"), ("GPU_MEMORY_UTILIZATION", "1.5"), ("MAX_MODEL_LEN", "-1"), ("MODEL_ALIASES", "justname")],
)
def test_bad_value_stops_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert name in message and "\n" not in message
    assert capsys.readouterr().err.strip() == message


def test_aliases_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIASES", "gpt-3.5-turbo=m1, gpt-4 = m1")
    assert load_settings().api.model_aliases == {"gpt-3.5-turbo": "m1", "gpt-4": "m1"}


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    with pytest.raises(Exception):
        settings.engine.max_num_seqs = 3  # type: ignore[misc]
