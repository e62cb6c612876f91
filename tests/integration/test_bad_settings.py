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
