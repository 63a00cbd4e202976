"""Kubelet device IDs -> accountable devices."""

from __future__ import annotations

from kubemeter_exporter.devices import Topology
from kubemeter_exporter.nvml.base import GpuInfo, MigInfo

G0 = "GPU-00000000-0000-0000-0000-000000000000"
G1 = "GPU-11111111-0000-0000-0000-000000000000"
M1 = "MIG-11111111-aaaa-0000-0000-000000000000"


def topo() -> Topology:
    return Topology(
        [
            GpuInfo(G0, 0, "NVIDIA L4", 1),
            GpuInfo(
                G1,
                1,
                "NVIDIA A100-SXM4-40GB",
                1,
                mig_enabled=True,
                mig_instances=(MigInfo(M1, 0, "1g.5gb", 1, G1, gpu_instance_id=7),),
            ),
        ]
    )


def test_device_id_forms() -> None:
    t = topo()
    assert t.resolve(G0) == G0
    assert t.resolve(f"{G0}::3") == G0  # time-slicing replica
    assert t.resolve(M1) == M1
    assert t.resolve(f"MIG-{G1}/7/0") == M1  # legacy MIG id
    assert t.resolve("0") == G0  # index strategy
    assert t.resolve("1") is None  # MIG-enabled parent is not accountable itself
    assert t.resolve(G1) is None
    assert t.resolve("mlx5_0") is None
    assert t.devices[M1].mig_profile == "1g.5gb"
    assert t.devices[M1].parent_uuid == G1
    assert t.devices[M1].index == "1/0"
