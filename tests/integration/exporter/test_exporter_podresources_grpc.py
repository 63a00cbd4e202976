"""The pod-resources client against a real gRPC server on a unix socket."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import ManualClock
from kubemeter_exporter.collector import Collector
from kubemeter_exporter.podresources import api_pb2, api_pb2_grpc
from kubemeter_exporter.podresources.client import (
    ContainerAllocation,
    PodResourcesClient,
    PodResourcesError,
)
from kubemeter_exporter.scenario import Scenario
from kubemeter_exporter.simulation import SimulatedNode

pytestmark = pytest.mark.integration

G = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
G2 = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
UID_P = "11111111-1111-4111-8111-111111111111"
UID_Q = "22222222-2222-4222-8222-222222222222"
UID_R = "33333333-3333-4333-8333-333333333333"


class Lister(api_pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, allocations: Any) -> None:
        self.allocations = allocations

    def List(self, request: Any, context: Any) -> Any:
        resp = api_pb2.ListPodResourcesResponse()
        by_pod: dict[tuple[str, str], Any] = {}
        for a in self.allocations():
            pr = by_pod.get((a.namespace, a.pod))
            if pr is None:
                pr = resp.pod_resources.add(name=a.pod, namespace=a.namespace)
                by_pod[(a.namespace, a.pod)] = pr
            c = pr.containers.add(name=a.container)
            c.devices.add(resource_name=a.resource, device_ids=list(a.device_ids))
        # A pod without devices, as the kubelet reports it, is ignored by the client.
        resp.pod_resources.add(name="cpu-only", namespace="x").containers.add(name="c")
        return resp


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths must be short: use /tmp rather than pytest's long tmp_path
    with tempfile.TemporaryDirectory(prefix="km-pr-", dir="/tmp") as d:
        yield Path(d)


def serve(path: Path, allocations: Any) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(Lister(allocations), server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    return server


def test_list_and_survive_kubelet_restart(sock_dir: Path) -> None:
    sock = sock_dir / "kubelet.sock"
    allocs = [
        ContainerAllocation("ns", "p", "main", "nvidia.com/gpu", (f"{G}::0", f"{G}::1")),
        ContainerAllocation("ns", "q", "side", "nvidia.com/mig-1g.10gb", ("MIG-x",)),
    ]
    server = serve(sock, lambda: allocs)
    client = PodResourcesClient(str(sock), timeout_s=2)
    try:
        assert client.list() == allocs
        server.stop(0).wait()
        os.unlink(sock) if sock.exists() else None
        with pytest.raises(PodResourcesError):
            client.list()
        server = serve(sock, lambda: allocs[:1])  # the kubelet comes back
        assert client.list() == allocs[:1]
    finally:
        client.close()
        server.stop(0)


def test_collector_over_grpc_pod_resources(sock_dir: Path, tmp_path: Path) -> None:
    """Names from the kubelet over gRPC, UIDs from cgroups, joined with no pod metadata."""
    sc = Scenario.model_validate(
        {
            "gpus": [{"uuid": G}, {"uuid": G2}],
            "pods": [
                {
                    "namespace": "a",
                    "name": "p",
                    "uid": UID_P,
                    "allocations": [{"devices": [f"{G}::0"], "start": 1, "end": 6}],
                },
                {  # shares G (time-slicing), starting after p: told apart from p
                    "namespace": "b",
                    "name": "q",
                    "uid": UID_Q,
                    "cgroup": "cgroupfs-v1",
                    "allocations": [{"devices": [f"{G}::1"], "start": 3, "end": 8}],
                },
                # no allocation: reaches G2 through NVIDIA_VISIBLE_DEVICES
                {"namespace": "c", "name": "r", "uid": UID_R},
            ],
            "processes": [
                {"pid": 10, "pod": "a/p", "device": G, "sm_util": 70, "start": 1, "end": 6},
                {"pid": 20, "pod": "b/q", "device": G, "sm_util": 20, "start": 3, "end": 8},
                {"pid": 30, "pod": "c/r", "device": G2, "sm_util": 50, "start": 2, "end": 4},
            ],
        }
    )
    clock = ManualClock()
    node = SimulatedNode(sc, clock, proc_root=tmp_path / "proc")
    sock = sock_dir / "kubelet.sock"
    server = serve(sock, node.pod_resources.list)
    client = PodResourcesClient(str(sock))
    col = Collector(
        node.backend,
        client,
        None,
        ProcCgroupReader(node.proc_root),
        node="n",
        clock=clock,
        interval_s=1,
    )
    try:
        col.sample()
        for _ in range(10):
            clock.advance(1)
            col.sample()
    finally:
        client.close()
        server.stop(0)
    got = {k[1:]: (s.allocated_ms, s.active_ms) for k, s in col.series.items()}
    assert got == {
        ("a", "p", UID_P): (5000, 3500),
        ("b", "q", UID_Q): (5000, 1000),
        ("", "", UID_R): (2000, 1000),
    }
    assert col.health.source_errors == {}
