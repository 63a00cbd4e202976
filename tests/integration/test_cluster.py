"""Smoke tests of the integration cluster itself (hack/devcluster.py, or KUBEMETER_KUBECONFIG).

These guard the assumptions the operator's integration tests build on: a real API server
with RBAC, a scheduler that accounts for ``nvidia.com/gpu``, and pods that reach Running
on fake GPU nodes (kwok) or on a kind worker with patched GPU capacity (docs/kind.md).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
POD_TIMEOUT_S = 90


@pytest.fixture
def namespace(kube_cluster: Any) -> Any:
    name = f"km-test-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl_ok("create", "namespace", name)
    # Pods need the namespace's `default` ServiceAccount, created asynchronously.
    kube_cluster.wait_for(
        f"ServiceAccount {name}/default",
        lambda: (
            kube_cluster.kubectl("get", "serviceaccount", "default", "-n", name).returncode == 0
        ),
        timeout=60,
    )
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false")


def gpu_nodes(kube_cluster: Any) -> dict[str, dict[str, Any]]:
    nodes = kube_cluster.get_json("nodes")["items"]
    return {
        n["metadata"]["name"]: n
        for n in nodes
        if int(n["status"].get("allocatable", {}).get(GPU, "0")) > 0
        and n["metadata"].get("labels", {}).get(GPU_PRODUCT_LABEL) == GPU_PRODUCT
    }


def test_apiserver_ready_and_rbac_enforced(kube_cluster: Any) -> None:
    readyz = kube_cluster.kubectl("get", "--raw", "/readyz")
    assert readyz.returncode == 0, readyz.stderr
    assert readyz.stdout.strip() == "ok"

    # Admission webhooks must be available to the operator.
    versions = kube_cluster.kubectl_ok("api-versions").split()
    assert "admissionregistration.k8s.io/v1" in versions

    # The admin may do anything ...
    admin = kube_cluster.kubectl("auth", "can-i", "delete", "nodes")
    assert admin.stdout.strip() == "yes", admin.stderr
    # ... an unprivileged service account may not: RBAC is on (not AlwaysAllow).
    sa = "system:serviceaccount:default:default"
    for verb, resource in [("list", "secrets"), ("create", "deployments"), ("delete", "nodes")]:
        res = kube_cluster.kubectl("auth", "can-i", verb, resource, "-n", "default", f"--as={sa}")
        assert res.stdout.strip() == "no", (verb, resource, res.stdout, res.stderr)
        assert res.returncode == 1


def test_fake_gpu_nodes_are_ready(kube_cluster: Any) -> None:
    nodes = gpu_nodes(kube_cluster)
    assert nodes, (
        f"no Ready node with allocatable {GPU} and label {GPU_PRODUCT_LABEL}={GPU_PRODUCT}"
    )
    for name, node in nodes.items():
        ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
        assert ready, (name, node["status"].get("conditions"))
        assert ready[0]["status"] == "True", (name, node["status"].get("conditions"))


def test_gpu_deployment_runs_on_fake_gpu_node(kube_cluster: Any, namespace: str) -> None:
    nodes = gpu_nodes(kube_cluster)
    assert nodes, "no GPU nodes"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-app", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gpu-app"}},
            "template": {
                "metadata": {"labels": {"app": "gpu-app"}},
                "spec": {
                    "nodeSelector": {GPU_PRODUCT_LABEL: GPU_PRODUCT},
                    "tolerations": [
                        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": GPU, "operator": "Exists", "effect": "NoSchedule"},
                    ],
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {
                                "limits": {GPU: "1"},
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                            },
                        }
                    ],
                },
            },
        },
    }
    kube_cluster.apply(deployment)

    def running_pods() -> list[dict[str, Any]] | None:
        pods = kube_cluster.get_json("pods", "-n", namespace, "-l", "app=gpu-app")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 2 else None

    pods = kube_cluster.wait_for("2 Running gpu-app pods", running_pods, timeout=POD_TIMEOUT_S)
    for pod in pods:
        assert pod["spec"]["nodeName"] in nodes, (pod["spec"].get("nodeName"), list(nodes))
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits[GPU] == "1"

    # The Deployment reports its replicas available (ReplicaSet + pod readiness propagate).
    kube_cluster.wait_for(
        "deployment gpu-app available",
        lambda: (
            kube_cluster.get_json("deployment", "gpu-app", "-n", namespace)["status"].get(
                "availableReplicas"
            )
            == 2
        ),
        timeout=POD_TIMEOUT_S,
    )


def test_scheduler_accounts_for_gpus(kube_cluster: Any, namespace: str) -> None:
    """A pod asking for more GPUs than any node has stays Pending with FailedScheduling."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-many-gpus", "namespace": namespace},
        "spec": {
            "nodeSelector": {GPU_PRODUCT_LABEL: GPU_PRODUCT},
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {GPU: "1000"}},
                }
            ],
        },
    }
    kube_cluster.apply(pod)

    def unschedulable() -> bool:
        p = kube_cluster.get_json("pod", "too-many-gpus", "-n", namespace)
        conds = {c["type"]: c for c in p["status"].get("conditions", [])}
        sched = conds.get("PodScheduled")
        return bool(sched and sched["status"] == "False" and sched.get("reason") == "Unschedulable")

    kube_cluster.wait_for("pod marked Unschedulable", unschedulable, timeout=60)
    p = kube_cluster.get_json("pod", "too-many-gpus", "-n", namespace)
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName")
    message = json.dumps(p["status"]["conditions"])
    assert f"Insufficient {GPU}" in message, message
