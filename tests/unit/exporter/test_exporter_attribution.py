"""Attribution from pod-resources (names) and cgroups (UIDs) alone: no Kubernetes API, no
pod metadata. The simulated node serves allocations as the kubelet would and writes
/proc/<pid>/cgroup files; the collector is given no pod source."""

from __future__ import annotations

from typing import Any

import pytest

from kubemeter_exporter.podresources.client import PodResourcesError

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U9 = "99999999-9999-4999-8999-999999999999"


def pod(ns: str, name: str, uid: str, *devices: str, **window: float) -> dict[str, Any]:
    allocations = [{"devices": list(devices), **window}] if devices else []
    return {"namespace": ns, "name": name, "uid": uid, "allocations": allocations}


def proc(pid: int, pod: str, device: str, sm: int, **window: float) -> dict[str, Any]:
    return {"pid": pid, "pod": pod, "device": device, "sm_util": sm, **window}


def test_names_from_pod_resources_uids_from_cgroups(sim_rig: Any) -> None:
    rig = sim_rig(
        {
            "node": "n1",
            "gpus": [{"uuid": GPU_A}, {"uuid": GPU_B}],
            "pods": [pod("ns1", "p1", U1, GPU_A), pod("ns2", "p2", U2, GPU_B)],
            "processes": [proc(10, "ns1/p1", GPU_A, 40), proc(20, "ns2/p2", GPU_B, 70)],
        }
    )
    assert rig.collector.pod_resources is not None
    rig.run_until(10)
    series = rig.collector.series
    assert set(series) == {(GPU_A, "ns1", "p1", U1), (GPU_B, "ns2", "p2", U2)}
    s1 = series[(GPU_A, "ns1", "p1", U1)]
    assert s1.labels == ("n1", GPU_A, "NVIDIA H100 80GB HBM3", "", "ns1", "p1", U1, "test")
    assert (s1.allocated_ms, s1.active_ms) == (10_000, 4_000)
    assert rig.counters(GPU_B, "ns2", "p2") == (10_000, 7_000)
    assert rig.collector.binder.bindings() == {U1: ("ns1", "p1"), U2: ("ns2", "p2")}


def test_pod_uid_joins_once_the_pods_processes_start(sim_rig: Any) -> None:
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}],
            "pods": [pod("a", "p", U1, GPU_A)],
            "processes": [proc(10, "a/p", GPU_A, 50, start=4)],
        }
    )
    rig.run_until(10)
    series = rig.collector.series
    # Held from t=0 (billed from the second sample), running from t=4: two series, one
    # after the other, never both growing in the same interval.
    named = series[(GPU_A, "a", "p", "")]
    joined = series[(GPU_A, "a", "p", U1)]
    assert (named.allocated_ms, named.active_ms) == (3_000, 0)
    assert (joined.allocated_ms, joined.active_ms) == (7_000, 3_500)
    assert not named.present
    assert rig.counters(GPU_A, "a", "p") == (10_000, 3_500)


def test_pod_without_allocation_is_billed_by_uid_alone(sim_rig: Any) -> None:
    # p9 requests no GPU but reaches GPU_B (NVIDIA_VISIBLE_DEVICES=all); p1 holds GPU_A.
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}, {"uuid": GPU_B}],
            "pods": [pod("a", "p1", U1, GPU_A), pod("x", "p9", U9)],
            "processes": [proc(10, "a/p1", GPU_A, 50), proc(90, "x/p9", GPU_B, 30)],
        }
    )
    rig.run_until(5)
    assert rig.uid_counters(GPU_B, U9) == (5_000, 1_500)
    assert rig.counters(GPU_A, "a", "p1") == (5_000, 2_500)
    assert not any(k[2] == "p9" for k in rig.collector.series)  # no name without the kubelet
    assert rig.collector.device_state[GPU_B].unattributed == 0


def test_intruder_on_a_held_gpu_after_its_holder_is_billed_by_uid(sim_rig: Any) -> None:
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}],
            "pods": [pod("a", "p1", U1, GPU_A), pod("x", "p9", U9)],
            "processes": [proc(10, "a/p1", GPU_A, 50), proc(90, "x/p9", GPU_A, 20, start=3)],
        }
    )
    rig.run_until(6)
    assert rig.counters(GPU_A, "a", "p1") == (6_000, 3_000)
    # Seen from the sample at t=3 (right-point rule: the interval ending there is billed).
    assert rig.uid_counters(GPU_A, U9) == (4_000, 800)
    assert rig.collector.binder.bindings() == {U1: ("a", "p1")}


def test_shared_gpu_pods_seen_together_bill_allocation_not_activity(sim_rig: Any) -> None:
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}],
            "pods": [pod("a", "p1", U1, f"{GPU_A}::0"), pod("b", "p2", U2, f"{GPU_A}::1")],
            "processes": [proc(10, "a/p1", GPU_A, 50), proc(20, "b/p2", GPU_A, 20)],
        }
    )
    rig.run_until(5)
    col = rig.collector
    # Which UID is which pod cannot be known: allocated time is exact by name, activity
    # is billed to nobody (never twice), and the processes are reported unattributed.
    assert set(col.series) == {(GPU_A, "a", "p1", ""), (GPU_A, "b", "p2", "")}
    assert rig.counters(GPU_A, "a", "p1") == (5_000, 0)
    assert rig.counters(GPU_A, "b", "p2") == (5_000, 0)
    assert col.device_state[GPU_A].unattributed == 2
    assert {(r.pid, r.key) for r in col.processes} == {(10, ("", "", U1)), (20, ("", "", U2))}


def test_shared_gpu_pods_started_one_after_the_other_are_exact(sim_rig: Any) -> None:
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}],
            "pods": [
                pod("a", "p1", U1, f"{GPU_A}::0"),
                pod("b", "p2", U2, f"{GPU_A}::1", start=3),
            ],
            "processes": [proc(10, "a/p1", GPU_A, 50), proc(20, "b/p2", GPU_A, 20, start=3)],
        }
    )
    rig.run_until(6)
    assert rig.counters(GPU_A, "a", "p1") == (6_000, 3_000)
    assert rig.counters(GPU_A, "b", "p2") == (4_000, 800)  # from the sample at t=3
    assert rig.collector.binder.bindings() == {U1: ("a", "p1"), U2: ("b", "p2")}


class FlakyKubelet:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def list(self) -> Any:
        if self.down:
            raise PodResourcesError("kubelet restarting")
        return self.inner.list()


@pytest.mark.parametrize("outage_s", [1, 10])
def test_kubelet_outage_keeps_known_pods_and_never_double_bills(
    sim_rig: Any, outage_s: int
) -> None:
    rig = sim_rig(
        {
            "gpus": [{"uuid": GPU_A}],
            "pods": [pod("a", "p1", U1, GPU_A)],
            "processes": [proc(10, "a/p1", GPU_A, 50)],
        }
    )
    col = rig.collector
    kubelet = FlakyKubelet(col.pod_resources)
    col.pod_resources = kubelet
    rig.run_until(3)
    kubelet.down = True
    for _ in range(outage_s):
        rig.clock.advance(1)
        col.sample()
    kubelet.down = False
    for _ in range(3):
        rig.clock.advance(1)
        col.sample()
    # The bound UID keeps its pod's series through the outage, short or long: one series.
    assert set(col.series) == {(GPU_A, "a", "p1", U1)}
    assert rig.counters(GPU_A, "a", "p1") == ((6 + outage_s) * 1000, (6 + outage_s) * 500)
    assert col.health.source_errors["pod_resources"] == outage_s
