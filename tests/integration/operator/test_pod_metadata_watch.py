"""The operator's metadata-only pod list + watch against a real kube-apiserver."""

from __future__ import annotations

import time
from collections.abc import Callable

import kubernetes
import pytest

from kubemeter_operator.metering.pods import PodRegistry
from kubemeter_operator.metering.podwatch import PodMetadataWatch, start_pod_watch

from support.cluster import KubeCluster

pytestmark = pytest.mark.integration

NS = "podwatch"


def pod(name: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": "gpu-node-0", "containers": [{"name": "c", "image": "x"}]},
    }


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the registry did not catch up"
        time.sleep(0.1)


def test_lists_and_follows_pod_metadata(kube_cluster: KubeCluster) -> None:
    k = kube_cluster
    k.kubectl("create", "namespace", NS)
    for i in range(3):
        k.apply(pod(f"p{i}", {"app": f"a{i}"}))
    client = kubernetes.config.new_client_from_config(config_file=k.kubeconfig)
    registry = PodRegistry()
    watch: PodMetadataWatch = start_pod_watch(client, registry)
    try:
        listed = {n for n in ("p0", "p1", "p2") if registry.lookup(NS, n) is not None}
        assert listed == {"p0", "p1", "p2"}
        p0 = registry.lookup(NS, "p0")
        assert p0 is not None
        assert p0.labels == {"app": "a0"}
        assert p0.uid

        k.apply(pod("p3", {"app": "late"}))
        k.kubectl_ok("-n", NS, "label", "pod", "p1", "tier=gold")
        uid2 = registry.lookup(NS, "p2")
        k.kubectl_ok("-n", NS, "delete", "pod", "p2", "--grace-period=0", "--force")

        eventually(lambda: registry.lookup(NS, "p3") is not None)
        eventually(lambda: (registry.lookup(NS, "p1") or p0).labels.get("tier") == "gold")
        assert uid2 is not None
        eventually(lambda: uid2.uid in registry._deleted)
        # a deleted pod stays resolvable (its last window may still be metered)
        assert registry.lookup(NS, "p2", uid2.uid) == uid2
    finally:
        watch.stop()
        k.kubectl("delete", "namespace", NS, "--wait=false")
