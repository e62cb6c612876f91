"""The container smoke test's checks fail when they must (seen: a container exiting 3 passed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "deploy" / "container" / "checks.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # As smoke.sh uses it: sourced under `set -e`, then a line after the check.
    script = f'set -euo pipefail; source "{CHECKS}"; stopped_cleanly {" ".join(args)}; echo passed'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize(("code", "elapsed"), [("3", "5"), ("137", "61"), ("0", "60")])
def test_a_bad_stop_fails_the_smoke_test(code: str, elapsed: str) -> None:
    result = run(code, elapsed, "60")
    assert result.returncode != 0 and "passed" not in result.stdout and "FAILED" in result.stdout


def test_a_clean_stop_passes() -> None:
    result = run("0", "12", "60")
    assert result.returncode == 0 and result.stdout.strip().endswith("passed")


def test_the_old_form_of_the_check_would_have_passed_a_failed_container() -> None:
    """Why checks.sh exists: under `set -e` a failing `[ a ] && [ b ]` list does not stop."""
    script = 'set -euo pipefail; code=3; [ "$code" = "0" ] && [ 5 -lt 60 ]; echo passed'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert result.stdout.strip() == "passed"
