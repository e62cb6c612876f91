from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components.core.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def our_metric_names() -> set[str]:
    metrics = Metrics()
    return {m._name for m in vars(metrics).values()}  # type: ignore[attr-defined]


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make system-deps` installs Debian's prometheus package")
    result = subprocess.run([promtool, "check", "rules", str(ROOT / "monitoring/alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_dashboard_use_only_metrics_we_export() -> None:
    names = our_metric_names()
    known = names | {n + suffix for n in names for suffix in ("_total", "_bucket", "_sum", "_count")}
    texts = (ROOT / "monitoring/alerts.yml").read_text() + (ROOT / "monitoring/grafana-dashboard.json").read_text()
    used = set(re.findall(r"\bvllm_[a-z_]+", texts))
    assert used and used <= known, used - known
    dashboard = json.loads((ROOT / "monitoring/grafana-dashboard.json").read_text())
    assert len(dashboard["panels"]) >= 8


def test_spec_metric_names_exist() -> None:
    required = {
        "vllm_request", "vllm_request_duration_seconds", "vllm_active_requests", "vllm_token_throughput",
        "vllm_ttft_seconds", "vllm_queue_size", "vllm_gpu_memory_usage_gb", "vllm_gpu_utilization_percent",
        "vllm_gpu_temperature_celsius", "vllm_circuit_breaker_state", "vllm_concurrent_connections",
        "vllm_warm_cache_hits", "vllm_oom_events",
    }
    assert required <= our_metric_names()


def test_security_alerts_fire_in_promtool_unit_tests() -> None:
    """monitoring/alerts.test.yml: refused authentications and rate-limit refusals above their
    thresholds fire (only on the replica concerned), below them do not."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make system-deps` installs Debian's prometheus package")
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=ROOT / "monitoring",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
