"""The container smoke test's checks fail when they must (seen: a container exiting 3 passed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "deploy" / "container" / "checks.sh"
SMOKE = ROOT / "deploy" / "container" / "smoke.sh"


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


def stop_check_of(smoke: str) -> str:
    """smoke.sh's own stop check: its shell options, then its lines from sourcing checks.sh
    up to the call (with whatever it wraps the call in)."""
    lines = smoke.splitlines()
    options = next(line for line in lines if line.startswith("set -"))
    start = next(i for i, line in enumerate(lines) if line.startswith("source deploy/container/checks.sh"))
    end = next(i for i, line in enumerate(lines) if "stopped_cleanly" in line and i > start)
    return "\n".join([options, *lines[start:end + 1]])


def run_stop_check(smoke: str, code: str, elapsed: str) -> subprocess.CompletedProcess[str]:
    script = f"code={code}; elapsed={elapsed}\n{stop_check_of(smoke)}\necho passed"
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=10)


def test_smoke_sh_stops_at_its_own_failed_stop_check() -> None:
    """smoke.sh as written, not a copy of its call: a container that exited 3 (or stopped
    past the grace period) ends the script; a clean stop goes on."""
    smoke = SMOKE.read_text()
    for code, elapsed in (("3", "5"), ("0", "61")):
        failed = run_stop_check(smoke, code, elapsed)
        assert failed.returncode != 0 and "passed" not in failed.stdout, (code, elapsed, failed.stdout)
    clean = run_stop_check(smoke, "0", "12")
    assert clean.returncode == 0 and clean.stdout.strip().endswith("passed"), clean.stdout + clean.stderr
