"""A bad setting stops `bentoml serve` itself with one line naming the variable."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness.server import BENTOML, ROOT, free_port


@pytest.mark.parametrize(("name", "value"), [("MAX_NUM_SEQS", "abc"), ("GPU_MEMORY_UTILIZATION", "1.5")])
def test_bad_setting_stops_serve_with_one_line(name: str, value: str) -> None:
    env = {**os.environ, name: value, "BENTOML_CONFIG": str(ROOT / "configuration.yaml")}
    result = subprocess.run(
        [BENTOML, "serve", "service:LLMService", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"invalid setting {name}="), lines
    assert "Traceback" not in result.stderr


def serve_with(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **variables, "BENTOML_CONFIG": str(ROOT / "configuration.yaml")}
    for name in ("API_KEYS", "ADMIN_API_KEYS", "KEYS_FILE"):
        if name not in variables:
            env.pop(name, None)
    return subprocess.run(
        [BENTOML, "serve", "service:LLMService", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_deployment_without_keys_stops_at_startup() -> None:
    line = one_line(serve_with(REQUIRE_API_KEYS="true"))
    assert "REQUIRE_API_KEYS is true but neither API_KEYS nor KEYS_FILE is set" in line


def test_a_bad_keys_file_stops_serve_naming_the_entry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - id: team-a\n    sha256: '" + "0" * 64 + "'\n    tokens_per_minute: -1\n")
    line = one_line(serve_with(KEYS_FILE=str(path)))
    assert line.startswith("invalid keys file:") and "key 'team-a', field tokens_per_minute" in line, line
