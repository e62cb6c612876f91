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
    # The keys file comes from a Secret volume mounted as a directory (a subPath mount
    # would never see the Secret's updates), and a pod without keys does not start.
    assert envs["REQUIRE_API_KEYS"]["value"] == "true"
    keys_file = envs["KEYS_FILE"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/")]
    assert "subPath" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "llm-service-keys"
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


def test_the_example_keys_secret_is_a_valid_keys_file() -> None:
    from components.keys_file import parse

    (secret,) = [doc for path, doc in documents() if doc["kind"] == "Secret" and path.name == "secret.example.yaml"]
    policy = parse(secret["stringData"]["keys.yaml"], "secret.example.yaml")
    assert any(p.admin for _, p in policy.digests) and len(policy.digests) == 3
