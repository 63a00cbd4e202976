"""The Helm chart: lints, renders, and every object it renders is accepted by a real
kube-apiserver (server-side dry run), with least-privilege RBAC."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from support.chart import CHART
from support.chart import helm as _helm
from support.cluster import KubeCluster

pytestmark = pytest.mark.integration


def test_chart_lints() -> None:
    _helm("lint", str(CHART), "--strict")


def test_rendered_chart_is_accepted_by_the_api_server(kube_cluster: KubeCluster) -> None:
    kube_cluster.kubectl_ok("apply", "-f", str(CHART / "crds"))
    kube_cluster.kubectl("create", "namespace", "kubemeter-chart")
    rendered = _helm("template", "km", str(CHART), "--namespace", "kubemeter-chart")
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert {"DaemonSet", "Deployment", "ClusterRole", "Service"} <= kinds
    out = kube_cluster.kubectl_ok("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "daemonset.apps/km-exporter created (server dry run)" in out
    assert "deployment.apps/km-operator created (server dry run)" in out


def test_operator_rbac_is_least_privilege() -> None:
    rendered = _helm("template", "km", str(CHART), "--namespace", "kubemeter")
    roles = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] in ("ClusterRole", "Role")
    }
    operator_rules = roles["km-operator"]["rules"]
    for rule in operator_rules:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "delete" not in rule["verbs"]
        assert "secrets" not in rule["resources"], "secrets only via the namespaced Role"
    writable = {
        res
        for rule in operator_rules
        if {"patch", "update", "create"} & set(rule["verbs"])
        for res in rule["resources"]
    }
    # enforcement: the scale subresource (never the Deployment itself), spec.suspend of
    # jobs and cronjobs, KEDA's pause annotation (keda: auto by default)
    assert writable == {
        "priceplans/status", "tenants/status", "events", "deployments/scale",
        "statefulsets/scale", "jobs", "cronjobs", "scaledobjects",
    }  # fmt: skip
    # the leader-election Lease: its own, by name; the chart creates it, so no create verb
    leader = roles["km-leader"]
    assert leader["metadata"]["namespace"] == "kubemeter"
    assert leader["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["kubemeter-operator"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    (lease,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Lease"]
    assert (lease["metadata"]["name"], lease["spec"]) == ("kubemeter-operator", {})
    token_role = roles["km-token-secrets"]
    assert token_role["metadata"]["namespace"] == "kubemeter"
    assert token_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert "km-exporter" not in roles  # the exporter needs no Kubernetes API access


def _docs(*args: str) -> dict[tuple[str, str], dict[str, object]]:
    rendered = _helm("template", "km", str(CHART), "--namespace", "kubemeter", *args)
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}


def test_operator_runs_two_replicas_with_a_lease_a_pdb_and_probes() -> None:
    docs = _docs()
    deployment: Any = docs[("Deployment", "km-operator")]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["KUBEMETER_LEASE_NAME"]["value"] == "kubemeter-operator"
    assert float(env["KUBEMETER_LEASE_DURATION_S"]["value"]) == 12
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdb: Any = docs[("PodDisruptionBudget", "km-operator")]
    assert pdb["spec"]["minAvailable"] == 1
    # the default SQLite ledger is one RWO volume: replicas share its node
    assert "podAffinity" in pod["affinity"]
    spread: Any = _docs("--set", "operator.db=postgresql+psycopg://u@db/kubemeter")
    spread_pod = spread[("Deployment", "km-operator")]["spec"]["template"]["spec"]
    assert "podAntiAffinity" in spread_pod["affinity"]
    single = _docs("--set", "operator.replicas=1")
    assert ("PodDisruptionBudget", "km-operator") not in single
