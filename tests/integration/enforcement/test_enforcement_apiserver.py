"""Enforcement's Kubernetes side against a real kube-apiserver, kube-controller-manager and
kwok GPU nodes: the real `Enforcer` and `KubeWorkloads`, a real ledger.

- Deployments go from 3 to 0 and back to 3 (the ReplicaSet controller really removes and
  recreates the kwok pods), a StatefulSet likewise; a Job and a CronJob are suspended and
  resumed; an HPA-targeted Deployment is recorded with its HPA; a KEDA ScaledObject is
  paused and unpaused; a non-GPU Deployment in the same namespace is never touched.
- `kubectl scale` while suspended is reverted with an EnforcementFought notice naming
  kubectl.
- The enforcing process is SIGKILLed in the middle of suspending 50 Deployments, and again
  in the middle of restoring them: each ends exactly at its recorded replicas.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.enforcement.enforcer import Enforcer
from kubemeter_operator.kube.client import load_api_client
from kubemeter_operator.kube.gpu import GpuResources
from kubemeter_operator.kube.workloads import KEDA_PAUSED, KubeWorkloads
from kubemeter_operator.ledger import Ledger

from support.cluster import KubeCluster
from support.enforce_once import enforce
from support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

_RUN = secrets.token_hex(3)  # each run (and parameter) its own namespaces
NS = f"enf-acme-{_RUN}"
NS_MANY = f"enf-many-{_RUN}"
GPU = {"limits": {"nvidia.com/gpu": "1"}}
CPU = {"limits": {"cpu": "100m"}}
UNSCHEDULABLE = {"kubemeter.dev/test": "nowhere"}  # pods stay Pending: no GPU is taken
KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
        "scope": "Namespaced",
        "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip
"""A minimal stand-in for KEDA's CRD (its published YAML cannot be fetched here): the
group, version, kind and plural kubemeter uses, schema left open."""


def pod_spec(resources: dict[str, Any], node_selector: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "registry.example/x:1", "resources": resources}]
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def deployment(name: str, replicas: int, resources: dict[str, Any], ns: str = NS,
               node_selector: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": pod_spec(resources, node_selector)},
        },
    }  # fmt: skip


def statefulset(name: str, replicas: int) -> dict[str, Any]:
    body = deployment(name, replicas, GPU)
    body["kind"] = "StatefulSet"
    body["spec"]["serviceName"] = name
    return body


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        # Pending (kwok completes a Job's running pods at once): it stays active
        "spec": {"template": {"spec": {**pod_spec(GPU, UNSCHEDULABLE), "restartPolicy": "Never"}}},
    }


def cronjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": {"spec": {**pod_spec(GPU),
                                                           "restartPolicy": "Never"}}}},
        },
    }  # fmt: skip


def tenant(namespaces: list[str]) -> Tenant:
    return Tenant.model_validate(
        {"metadata": {"name": f"t-{namespaces[0]}"},
         "spec": {"pricePlanRef": {"name": "p"}, "namespaces": namespaces}}
    )  # fmt: skip


@pytest.fixture
def cluster(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    for ns in (NS, NS_MANY):
        kube_cluster.kubectl("create", "namespace", ns)
    yield kube_cluster
    for ns in (NS, NS_MANY):
        kube_cluster.kubectl("delete", "all", "--all", "-n", ns, "--wait=false")


def spec_of(cluster: KubeCluster, kind: str, name: str, ns: str = NS) -> dict[str, Any]:
    spec: dict[str, Any] = cluster.get_json(kind, name, "-n", ns)["spec"]
    return spec


def pods_of(cluster: KubeCluster, app: str, ns: str = NS) -> int:
    items = cluster.get_json("pods", "-n", ns, "-l", f"app={app}")["items"]
    return len([p for p in items if not p["metadata"].get("deletionTimestamp")])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_suspend_and_restore_every_kind_exactly(cluster: KubeCluster, ledger_url: str) -> None:
    cluster.apply(KEDA_CRD)
    cluster.wait_for("the ScaledObject CRD", lambda: cluster.kubectl(
        "get", "scaledobjects", "-n", NS).returncode == 0)  # fmt: skip
    for body in (
        deployment("train", 3, GPU), deployment("scaled", 2, GPU), deployment("keda", 1, GPU),
        deployment("web", 2, CPU), statefulset("kv", 2), job("batch"), cronjob("nightly"),
    ):  # fmt: skip
        cluster.apply(body)
    cluster.apply({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled-hpa", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "scaled"},
                 "minReplicas": 1, "maxReplicas": 4,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]},
    })  # fmt: skip
    cluster.apply({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "keda-so", "namespace": NS},
        "spec": {"scaleTargetRef": {"name": "keda"}},
    })  # fmt: skip
    cluster.wait_for("3 train pods", lambda: pods_of(cluster, "train") == 3)
    t = tenant([NS])
    with Ledger.open(ledger_url) as ledger:
        api = KubeWorkloads(load_api_client(cluster.kubeconfig))
        enforcer = Enforcer(ledger, api, GpuResources())

        def settle(action: str, state: str) -> None:
            deadline = time.monotonic() + 90
            got: Any = None
            while time.monotonic() < deadline:
                got, problems = run(enforce(enforcer, ledger, t, action))
                assert problems == []
                if got == state:
                    return
                time.sleep(1)
            pytest.fail(f"{action}: suspension still {got}")

        settle("suspend", "suspended")  # all GPU workloads at 0, their pods gone
        for name in ("train", "scaled", "keda"):
            assert spec_of(cluster, "deployment", name)["replicas"] == 0
            assert pods_of(cluster, name) == 0
        assert spec_of(cluster, "statefulset", "kv")["replicas"] == 0
        assert spec_of(cluster, "job", "batch")["suspend"] is True
        assert spec_of(cluster, "cronjob", "nightly")["suspend"] is True
        assert spec_of(cluster, "deployment", "web")["replicas"] == 2  # no GPU
        so = cluster.get_json("scaledobject", "keda-so", "-n", NS)
        assert so["metadata"]["annotations"][KEDA_PAUSED] == "0"
        suspension = ledger.active_suspensions()[t.name]
        rows = {r.name: r for r in ledger.suspension_workloads(suspension.id)}
        assert {n: rows[n].replicas for n in ("train", "scaled", "keda", "kv")} == {
            "train": 3, "scaled": 2, "keda": 1, "kv": 2}  # fmt: skip
        assert rows["batch"].suspend is False
        assert rows["nightly"].suspend is False
        assert "HPA scaled-hpa" in (rows["scaled"].autoscaler or "")
        assert rows["keda"].keda_object == "keda-so"
        assert "web" not in rows

        # someone scales it back up by hand: it goes to 0 again, with an EnforcementFought.
        # Through /scale the API server records no manager after a scale to 0 (see
        # enforcement.fights): the Event says so ...
        cluster.kubectl_ok("scale", "deployment", "train", "-n", NS, "--replicas=3")
        run(enforce(enforcer, ledger, t, "suspend"))
        assert spec_of(cluster, "deployment", "train")["replicas"] == 0

        def fought() -> list[str]:
            return [n.message for n in ledger.notices(t.name) if n.type == "EnforcementFought"]

        assert len(fought()) == 1, fought()
        assert "a /scale write" in fought()[0]
        # ... and a write of the Deployment itself (GitOps self-heal) names its manager
        cluster.kubectl_ok("patch", "deployment", "train", "-n", NS, "--field-manager=gitops-bot",
                           "-p", '{"spec": {"replicas": 2}}')  # fmt: skip
        run(enforce(enforcer, ledger, t, "suspend"))
        assert spec_of(cluster, "deployment", "train")["replicas"] == 0
        assert len(fought()) == 2, fought()
        assert "gitops-bot (Update)" in fought()[1]

        settle("restore", "restored")
        for name, n in (("train", 3), ("scaled", 2), ("keda", 1)):
            assert spec_of(cluster, "deployment", name)["replicas"] == n
        assert spec_of(cluster, "statefulset", "kv")["replicas"] == 2
        assert spec_of(cluster, "job", "batch")["suspend"] is False
        assert spec_of(cluster, "cronjob", "nightly")["suspend"] is False
        so = cluster.get_json("scaledobject", "keda-so", "-n", NS)
        assert KEDA_PAUSED not in (so["metadata"].get("annotations") or {})
        cluster.wait_for("3 train pods again", lambda: pods_of(cluster, "train") == 3)
        restored = [n for n in ledger.notices(t.name) if n.type == "WorkloadsRestored"]
        assert len(restored) == 1
    cluster.kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=false")


def _run_killed(cluster: KubeCluster, ledger_url: str, t: Tenant, action: str, done: Any) -> None:
    """Start an enforcing process and SIGKILL it once `done()` says it is half-way."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "support" / "enforce_once.py"),
         cluster.kubeconfig, ledger_url, json.dumps(t.to_api()), action, "--delay", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        cluster.wait_for(f"{action} half-way", done, timeout=120, interval=0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=30)[0].decode()
    assert "done" not in out, f"the {action} finished before the kill:\n{out}"


def test_sigkill_mid_suspend_and_mid_restore_ends_exactly_as_recorded(
    cluster: KubeCluster, tmp_path: Path
) -> None:
    sizes = {f"svc-{i:02d}": 1 + i % 3 for i in range(50)}
    for name, n in sizes.items():
        cluster.apply(deployment(name, n, GPU, ns=NS_MANY, node_selector=UNSCHEDULABLE))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    t = tenant([NS_MANY])

    def replicas() -> dict[str, int]:
        items = cluster.get_json("deployments", "-n", NS_MANY)["items"]
        return {d["metadata"]["name"]: d["spec"]["replicas"] for d in items}

    def between(lo: int, hi: int, at: int) -> bool:
        stopped = sum(1 for v in replicas().values() if v == at)
        return lo <= stopped <= hi

    _run_killed(cluster, ledger_url, t, "suspend", lambda: between(10, 40, 0))
    assert 0 < sum(1 for v in replicas().values() if v == 0) < 50  # really half-way
    with Ledger.open(ledger_url) as ledger:
        enforcer = Enforcer(
            ledger, KubeWorkloads(load_api_client(cluster.kubeconfig)), GpuResources()
        )
        run(enforce(enforcer, ledger, t, "suspend"))  # the next leader's cycle
        assert set(replicas().values()) == {0}
        suspension = ledger.active_suspensions()[t.name]
        recorded = {r.name: r.replicas for r in ledger.suspension_workloads(suspension.id)}
        assert recorded == sizes  # the originals, never a 0 the killed process wrote

    def restored_some() -> bool:
        back = sum(1 for n, v in replicas().items() if v == sizes[n])
        return 10 <= back <= 40

    _run_killed(cluster, ledger_url, t, "restore", restored_some)
    with Ledger.open(ledger_url) as ledger:
        enforcer = Enforcer(
            ledger, KubeWorkloads(load_api_client(cluster.kubeconfig)), GpuResources()
        )
        state, problems = run(enforce(enforcer, ledger, t, "restore"))
        assert (state, problems) == ("restored", [])
        assert replicas() == sizes
        restored = [n for n in ledger.notices(t.name) if n.type == "WorkloadsRestored"]
        assert len(restored) == 1
