"""The Kubernetes manifests in deploy/k8s: valid against the schema offline, probing the server's own routes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perfkit.serving.middleware import ROUTES

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def _docs() -> dict[str, dict]:
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_every_manifest_validates_against_the_kubernetes_schema():
    docs = _docs()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs.values():
        kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize(
    "broken",
    [
        lambda d: d["spec"].__setitem__("replicas", "two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("readinesProbe", {}),  # a typo: unknown field
    ],
)
def test_the_validation_catches_a_broken_deployment(broken):
    doc = _docs()["Deployment"]
    broken(doc)
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, kv.latest_version(), strict=True)


def test_probes_use_the_servers_health_routes():
    container = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"  # 200 once the model is loaded and warm
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # 200 as soon as the process listens
    assert {"/health", "/healthz"} <= set(ROUTES)


def test_the_hpa_scales_the_deployment_on_cpu_and_queue_depth():
    docs = _docs()
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "perfkit_queue_depth"
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
