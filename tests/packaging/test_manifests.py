"""Kubernetes manifests, validated offline against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
CRDS = {"ServiceMonitor", "PrometheusRule"}
# Models generated from the CRDs (requirements/crd-models.txt, installed by `make install`),
# last on the path: their own deps are the venv's.
sys.path.append(str(Path(sys.executable).parents[1] / "crd-models"))


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
            "ServiceMonitor", "PrometheusRule", "Secret", "NetworkPolicy"} <= kinds


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
    # The scaling target is the engine's batch (the measured knee, docs/benchmarks/knee.json),
    # in BentoML's own schema; requests past it wait in the replica's fair queue.
    from _bentoml_sdk.service.config import validate

    traffic = validate(service["config_overrides"])["traffic"]
    envs = {env["name"]: env["value"] for env in config["envs"]}
    assert traffic["concurrency"] == int(envs["MAX_NUM_SEQS"]) and traffic["external_queue"] is False


def test_the_example_keys_secret_is_a_valid_keys_file() -> None:
    from components.edge.keys_file import parse

    (secret,) = [doc for path, doc in documents() if doc["kind"] == "Secret" and path.name == "secret.example.yaml"]
    policy = parse(secret["stringData"]["keys.yaml"], "secret.example.yaml")
    assert any(p.admin for _, p in policy.digests) and len(policy.digests) == 3


def optional_documents() -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted((K8S / "optional").glob("*.yaml"))}


def test_autoscalers_and_the_picker_read_the_true_waiting_count() -> None:
    """The HPA (through prometheus-adapter), KEDA and the endpoint picker's pool all use
    vllm:num_requests_waiting, which the service reports as its whole backlog
    (tests/integration/test_hardening.py shows the engine's own count would not)."""
    (hpa,) = [doc for _, doc in documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == ["vllm_num_requests_waiting"]
    (hpa_path,) = [path for path, doc in documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert 'matches: "vllm:num_requests_waiting", as: "vllm_num_requests_waiting"' in hpa_path.read_text()
    optional = optional_documents()
    keda = optional["keda-scaledobject.yaml"]
    assert keda["apiVersion"] == "keda.sh/v1alpha1" and keda["kind"] == "ScaledObject"
    assert keda["spec"]["scaleTargetRef"]["name"] == hpa["spec"]["scaleTargetRef"]["name"]
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "vllm:num_requests_waiting{" in trigger["metadata"]["query"]
    pool = optional["inferencepool.yaml"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1" and pool["kind"] == "InferencePool"
    (deployment,) = [doc for path, doc in documents() if doc["kind"] == "Deployment" and path.name == "deployment.yaml"]
    assert pool["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    ports = [p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]]
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == ports


def test_redis_needs_a_password_and_only_the_service_reaches_it() -> None:
    docs = documents()
    redis_deployments = [doc for path, doc in docs if doc["kind"] == "Deployment" and path.name == "redis.yaml"]
    assert [doc["metadata"]["name"] for doc in redis_deployments] == ["llm-redis", "llm-redis-store"]
    password_from = {"secretKeyRef": {"name": "llm-redis-auth", "key": "password"}}
    for redis_deployment in redis_deployments:
        redis_container = redis_deployment["spec"]["template"]["spec"]["containers"][0]
        assert redis_container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
        assert {"name": "REDIS_PASSWORD", "valueFrom": password_from} in redis_container["env"]
    (service,) = [doc for path, doc in docs if doc["kind"] == "Deployment" and path.name == "deployment.yaml"]
    env = service["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    # Kubernetes expands $(REDIS_PASSWORD) only from a variable defined before it.
    assert names.index("REDIS_PASSWORD") < names.index("RATE_LIMIT_STORAGE_URI")
    assert {"name": "REDIS_PASSWORD", "valueFrom": password_from} in env
    uri = next(e["value"] for e in env if e["name"] == "RATE_LIMIT_STORAGE_URI")
    assert uri.startswith("redis://:$(REDIS_PASSWORD)@llm-redis:")
    assert names.index("REDIS_PASSWORD") < names.index("RESPONSES_STORE_URI")
    store_uri = next(e["value"] for e in env if e["name"] == "RESPONSES_STORE_URI")
    assert store_uri.startswith("redis://:$(REDIS_PASSWORD)@llm-redis-store:")
    policies = {doc["metadata"]["name"]: doc["spec"] for _, doc in docs if doc["kind"] == "NetworkPolicy"}
    assert policies["llm-redis"]["podSelector"]["matchExpressions"] == [
        {"key": "app", "operator": "In", "values": ["llm-redis", "llm-redis-store"]}]
    assert policies["llm-redis"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app": "llm-service"}}}], "ports": [{"port": 6379, "protocol": "TCP"}]}]
    (service_ingress,) = policies["llm-service"]["ingress"]
    assert all("namespaceSelector" in source and "podSelector" not in source for source in service_ingress["from"])


def redis_args(name: str) -> dict[str, str]:
    (deployment,) = [doc for path, doc in documents() if doc["kind"] == "Deployment" and path.name == "redis.yaml"
                     and doc["metadata"]["name"] == name]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_no_redis_the_service_uses_evicts() -> None:
    """Issue #24 rule 5: the limits and the ledger are never evictable, and the store is
    bounded per key by the service, never by Redis picking records regardless of owner
    (tests/integration/test_invariant_store_redis.py starts Redis with these policies)."""
    limits, store = redis_args("llm-redis"), redis_args("llm-redis-store")
    assert limits["--maxmemory-policy"] == store["--maxmemory-policy"] == "noeviction"
    # Room for the store's default bound (RESPONSES_STORE_MAX_BYTES, 64 MiB) three times over.
    assert int(store["--maxmemory"].removesuffix("mb")) >= 3 * 64
    # The local cluster (deploy/cluster/cluster.sh) configures its two Redis the same way.
    script = (ROOT / "deploy/cluster/cluster.sh").read_text()
    assert "maxmemory-policy noeviction" in script
    assert 'RESPONSES_STORE_URI="redis://:$password@llm-redis-store:' in script
    assert "volatile" not in script and "allkeys" not in script


def custom_resources() -> list[tuple[str, dict]]:
    paths = [*sorted(K8S.glob("*.yaml")), K8S / "optional/keda-scaledobject.yaml"]
    return [(path.name, doc) for path in paths for doc in yaml.safe_load_all(path.read_text())
            if doc and doc["kind"] in {*CRDS, "ScaledObject"}]


def crd_model(kind: str):  # type: ignore[no-untyped-def]
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    return {"ScaledObject": ScaledObject, "ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}[kind]


def test_custom_resources_match_their_crd_schemas() -> None:
    """Types and required fields from the CRDs' schemas; an unknown field shows as a
    difference after the round trip (the models keep only what the schema knows)."""
    checked = set()
    for name, doc in custom_resources():
        model = crd_model(doc["kind"]).model_validate(doc)
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc, name
        checked.add(doc["kind"])
    assert checked == {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


def test_the_crd_check_catches_a_wrong_type_and_an_unknown_field() -> None:
    import pydantic

    (name, doc), = [(n, d) for n, d in custom_resources() if d["kind"] == "ScaledObject"]
    with pytest.raises(pydantic.ValidationError):
        crd_model("ScaledObject").model_validate({**doc, "spec": {**doc["spec"], "minReplicaCount": "one"}})
    typo = {**doc, "spec": {**doc["spec"], "triggerz": doc["spec"]["triggers"]}}
    model = crd_model("ScaledObject").model_validate(typo)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) != typo
