"""deploy/k8s: every manifest valid against the Kubernetes schemas (strict), the
overlays render, and the wiring holds (selectors, probes, Secret keys, settings)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from shardflow.router.settings import RouterSettings
from shardflow.shard.executor_settings import ExecutorSettings
from tests.conftest import ROOT
from tests.kustomize import render

K8S = ROOT / "deploy" / "k8s"
VERSION = "1.30.0"


@pytest.fixture(scope="module", params=["base", "overlays/production"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def _by(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered):
    for doc in rendered:
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_selectors_probes_and_secrets_are_wired(rendered):
    deployments = _by(rendered, "Deployment")
    secrets = _by(rendered, "Secret")
    config = _by(rendered, "ConfigMap")["shardflow-config"]["data"]
    namespaces = {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"}
    assert namespaces == set(_by(rendered, "Namespace"))
    assert deployments["shardflow-coordinator"]["spec"]["replicas"] == 2
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert container["image"].endswith(":0.1.0"), name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if container["args"] == ["router"]:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]]["stringData"], (name, ref)
        env = {**config, **{e["name"]: "x" for e in container["env"] if "valueFrom" in e}}
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        env["SHARDFLOW_DSN"] = env["SHARDFLOW_CATALOG"] = "postgresql://h/db?sslmode=verify-full"
        role = container["args"][0]
        if role in ("router", "executor"):
            settings = {"router": RouterSettings, "executor": ExecutorSettings}[role]
            settings.load({}, env)  # the ConfigMap and Secret satisfy the real settings
    for pdb in _by(rendered, "PodDisruptionBudget").values():
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        )
    router = _by(rendered, "Service")["shardflow-router"]
    assert router["spec"]["selector"].items() <= (
        deployments["shardflow-router"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_production_overlay_scales_and_moves_namespace():
    base = _by(render(K8S / "base"), "Deployment")
    prod = _by(render(K8S / "overlays" / "production"), "Deployment")
    assert base["shardflow-router"]["spec"]["replicas"] == 2
    assert prod["shardflow-router"]["spec"]["replicas"] == 4
    assert {d["metadata"]["namespace"] for d in prod.values()} == {"shardflow-prod"}


def test_the_pod_monitor_scrapes_every_metrics_port():
    (monitor,) = yaml.safe_load_all((K8S / "monitoring" / "podmonitor.yaml").read_text())
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    for dep in _by(render(K8S / "base"), "Deployment").values():
        pod = dep["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert {p["name"] for p in container["ports"]} & ports
