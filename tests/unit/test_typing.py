"""mypy (with pydantic's plugin) is clean on components/ and service.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_is_clean_on_components() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "components", "service.py"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
