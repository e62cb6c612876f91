"""Kubernetes manifests, validated offline against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
CRDS = {"ServiceMonitor", "PrometheusRule"}


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_builtin_kinds_pass_strict_schema_validation() -> None:
    files = sorted({str(path) for path, doc in documents() if doc["kind"] not in CRDS})
    result = subprocess.run([VALIDATE, "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") >= 8


def test_expected_objects_are_there() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "PrometheusRule", "Secret"} <= kinds


def test_deployment_probes_grace_and_security() -> None:
    (deployment,) = [doc for path, doc in documents() if doc["kind"] == "Deployment" and path.name == "deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    envs = {e["name"]: e for e in container["env"]}
    grace = float(envs["GRACEFUL_SHUTDOWN_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] > grace + 5
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "secretKeyRef" in envs["API_KEYS"]["valueFrom"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert envs["RATE_LIMIT_STORAGE_URI"]["value"].startswith("redis://")


def test_prometheus_rule_matches_monitoring_alerts() -> None:
    (rule,) = [doc for _, doc in documents() if doc["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())


def test_bentocloud_config() -> None:
    config = yaml.safe_load((ROOT / "deploy/bentocloud.yaml").read_text())
    service = config["services"]["llm-service"]
    assert service["instance_type"].startswith("gpu.t4")
    assert service["scaling"]["min_replicas"] >= 1 and service["scaling"]["max_replicas"] > service["scaling"]["min_replicas"]
    assert "llm-service-keys" in config["secrets"]
