"""Static security scan: ruff's flake8-bandit rules (S) over the service code; every
exception is justified in place with a `noqa` comment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUFF = str(Path(sys.executable).with_name("ruff"))


def test_ruff_security_rules_are_clean() -> None:
    result = subprocess.run(
        [RUFF, "check", "--select", "S,BLE", "--no-cache", "service.py", "components", "benchmarks", "harness"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
