"""Exact counter values for scripted scenarios on the simulated backend."""

from __future__ import annotations

from typing import Any

from kubemeter_exporter import contract as c

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
MIG_1 = "MIG-bbbbbbbb-1111-0000-0000-000000000001"
MIG_2 = "MIG-bbbbbbbb-2222-0000-0000-000000000002"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


def base_scenario() -> dict[str, Any]:
    return {
        "node": "n1",
        "gpus": [
            {"uuid": GPU_A, "model": "NVIDIA H100 80GB HBM3"},
            {
                "uuid": GPU_B,
                "model": "NVIDIA A100-SXM4-80GB",
                "mig": [
                    {"uuid": MIG_1, "profile": "1g.10gb", "memory_mib": 9728, "gpu_instance_id": 9},
                    {"uuid": MIG_2, "profile": "3g.40gb", "memory_mib": 40192},
                ],
            },
        ],
        "pods": [
            {
                "namespace": "ns1",
                "name": "p1",
                "uid": U1,
                "allocations": [{"devices": [f"{GPU_A}::0"], "start": 1, "end": 11}],
            },
            {
                "namespace": "ns2",
                "name": "p2",
                "uid": U2,
                "runtime": "crio",
                "allocations": [{"devices": [f"{GPU_A}::1"], "start": 6, "end": 16}],
            },
            {
                "namespace": "ns3",
                "name": "p3",
                "uid": U3,
                "qos": "guaranteed",
                "allocations": [{"devices": [MIG_1], "start": 2, "end": 7}],
            },
        ],
        "processes": [
            {
                "pid": 101,
                "pod": "ns1/p1",
                "device": GPU_A,
                "sm_util": 60,
                "memory_mib": 1000,
                "start": 1,
                "end": 11,
            },
            {
                "pid": 201,
                "pod": "ns2/p2",
                "device": GPU_A,
                "sm_util": 30,
                "memory_mib": 500,
                "start": 6,
                "end": 16,
            },
            {
                "pid": 202,
                "pod": "ns2/p2",
                "device": GPU_A,
                "sm_util": 25,
                "memory_mib": 100,
                "start": 8,
                "end": 12,
            },
            {
                "pid": 301,
                "pod": "ns3/p3",
                "device": MIG_1,
                "sm_util": 50,
                "memory_mib": 10,
                "start": 3,
                "end": 7,
            },
            {"pid": 999, "device": GPU_A, "sm_util": 40, "start": 20, "end": 23},
        ],
    }


def test_scripted_scenario_exact_counters(sim_rig: Any) -> None:
    rig = sim_rig(base_scenario())
    rig.run_until(30)
    # p1 holds replica ::0 for 10 s at 60 %.
    assert rig.counters(GPU_A, "ns1", "p1") == (10_000, 6_000)
    # p2 shares the GPU (replica ::1) for 10 s: 30 % for 10 s + 25 % for 4 s.
    assert rig.counters(GPU_A, "ns2", "p2") == (10_000, 3_000 + 1_000)
    # MIG instance: held 5 s, a process runs 4 s; no utilisation -> presence.
    assert rig.counters(MIG_1, "ns3", "p3") == (5_000, 4_000)
    # A host process outside any pod: the unattributed series.
    assert rig.counters(GPU_A, "", "") == (3_000, 1_200)
    st = rig.collector.device_state
    assert st[GPU_A].util_source == c.UTIL_SOURCE_PROCESS
    assert st[MIG_1].util_source == c.UTIL_SOURCE_PRESENCE
    # Counters are flat after the pods released their devices and the processes ended.
    before = {k: (s.allocated_ms, s.active_ms) for k, s in rig.collector.series.items()}
    rig.run_until(40)
    after = {k: (s.allocated_ms, s.active_ms) for k, s in rig.collector.series.items()}
    assert before == after
    assert all(not s.present for s in rig.collector.series.values())


def test_series_labels_and_memory(sim_rig: Any) -> None:
    rig = sim_rig(base_scenario())
    rig.run_until(9)
    series = dict(rig.collector.series.items())
    s2 = series[(GPU_A, "ns2", "p2", U2)]
    assert s2.labels == ("n1", GPU_A, "NVIDIA H100 80GB HBM3", "", "ns2", "p2", U2, "test")
    assert s2.memory_bytes == 600 * 1024 * 1024
    s3 = series[(MIG_1, "ns3", "p3", U3)]
    assert s3.labels[2:4] == ("NVIDIA A100-SXM4-80GB", "1g.10gb")
    assert tuple(c.COUNTER_LABELS) == (
        "node",
        "gpu_uuid",
        "gpu_model",
        "mig_profile",
        "namespace",
        "pod",
        "pod_uid",
        "exporter_instance",
    )


def test_fractional_active_is_carried_exactly(sim_rig: Any) -> None:
    sc = {
        "gpus": [{"uuid": GPU_A}],
        "pods": [{"namespace": "a", "name": "p", "uid": U1, "allocations": [{"devices": [GPU_A]}]}],
        "processes": [{"pid": 10, "pod": "a/p", "device": GPU_A, "sm_util": 33}],
    }
    rig = sim_rig(sc)
    rig.collector.sample()
    for _ in range(997):
        rig.clock.advance(ms=1001)
        rig.collector.sample()
    alloc, active = rig.counters(GPU_A, "a", "p")
    assert alloc == 997 * 1001
    assert active == (997 * 1001 * 33) // 100  # floor of the exact product, no drift


def test_shared_gpu_without_process_util_splits_device_util(sim_rig: Any) -> None:
    sc = base_scenario()
    sc["gpus"][0]["process_utilization"] = False
    sc["processes"] = [
        {"pid": 101, "pod": "ns1/p1", "device": GPU_A, "sm_util": 60, "start": 1, "end": 11},
        {"pid": 201, "pod": "ns2/p2", "device": GPU_A, "sm_util": 30, "start": 6, "end": 16},
    ]
    rig = sim_rig(sc)
    rig.run_until(20)
    # t in [1,6): device util 60 %, p1 alone -> 60 %; [6,11): util 90 % split 1:1 -> 45 %
    # each; [11,16): p2 alone -> 30 %.
    assert rig.counters(GPU_A, "ns1", "p1") == (10_000, 5 * 600 + 5 * 450)
    assert rig.counters(GPU_A, "ns2", "p2") == (10_000, 5 * 450 + 5 * 300)
    assert rig.collector.device_state[GPU_A].util_source == c.UTIL_SOURCE_DEVICE


def test_gpu_lost_mid_run_is_not_billed_and_recovers(sim_rig: Any) -> None:
    sc = base_scenario()
    sc["faults"] = [{"kind": "gpu_lost", "gpu": GPU_A, "start": 5, "end": 8}]
    rig = sim_rig(sc)
    rig.run_until(30)
    h = rig.collector.health
    assert h.nvml_errors.get("gpu_lost", 0) >= 1
    # Samples at 5,6,7 fail; at 8 the interval since 4 (4 s) is capped at 2 s, 2 s gap.
    assert rig.counters(GPU_A, "ns1", "p1") == (8_000, 4_800)
    st = rig.collector.device_state[GPU_A]
    assert (st.gap_count, st.gap_ms) == (1, 2_000)
    # The MIG GPU kept being sampled.
    assert rig.counters(MIG_1, "ns3", "p3") == (5_000, 4_000)
    assert h.nvml_up


def test_nvml_unavailable_then_recovers(sim_rig: Any) -> None:
    sc = base_scenario()
    sc["faults"] = [{"kind": "nvml_unavailable", "start": 0, "end": 3.5}]
    rig = sim_rig(sc)
    rig.collector.sample()
    assert not rig.collector.health.nvml_up
    assert rig.collector.health.nvml_errors == {"init": 1}
    rig.run_until(30)
    assert rig.collector.health.nvml_up
    assert rig.collector.health.nvml_errors["init"] == 5  # t = 0 (twice), 1, 2, 3
    # First successful sample at t=4 bills nothing: p1 billed for samples 5..10.
    assert rig.counters(GPU_A, "ns1", "p1") == (6_000, 3_600)


def test_nvml_fails_mid_run(sim_rig: Any) -> None:
    sc = base_scenario()
    sc["faults"] = [{"kind": "nvml_unavailable", "start": 3, "end": 4}]
    rig = sim_rig(sc)
    rig.run_until(30)
    # Sample at 3 fails (driver gone), re-init at 4 works: interval (2, 4] is 2 s <= cap.
    assert rig.counters(GPU_A, "ns1", "p1") == (10_000, 6_000)
    assert rig.collector.health.nvml_errors.get("driver_not_loaded", 0) >= 1


def test_long_pause_is_capped_and_counted_as_gap(sim_rig: Any) -> None:
    sc = {
        "gpus": [{"uuid": GPU_A}],
        "pods": [{"namespace": "a", "name": "p", "uid": U1, "allocations": [{"devices": [GPU_A]}]}],
        "processes": [{"pid": 10, "pod": "a/p", "device": GPU_A, "sm_util": 100}],
    }
    rig = sim_rig(sc)
    rig.collector.sample()
    rig.clock.advance(ms=1000)
    rig.collector.sample()
    rig.clock.advance(ms=60_000)  # e.g. the process was frozen
    rig.collector.sample()
    assert rig.counters(GPU_A, "a", "p") == (3_000, 3_000)
    st = rig.collector.device_state[GPU_A]
    assert (st.gap_count, st.gap_ms) == (1, 58_000)


def test_restart_creates_new_instance_series(sim_rig: Any) -> None:
    sc = base_scenario()
    a = sim_rig(sc, instance=None)
    b = sim_rig(sc, instance=None)
    assert a.collector.instance != b.collector.instance
    a.run_until(5)
    assert all(s.labels[-1] == a.collector.instance for s in a.collector.series.values())


def test_series_retention_drops_flat_series(sim_rig: Any) -> None:
    rig = sim_rig(base_scenario(), series_retention_s=5)
    rig.run_until(12)
    assert (GPU_A, "ns3", "p3", U3) not in rig.collector.series  # MIG series, gone at 7
    assert (MIG_1, "ns3", "p3", U3) not in rig.collector.series
    assert (GPU_A, "ns1", "p1", U1) in rig.collector.series


def test_pod_without_processes_is_allocated_but_idle(sim_rig: Any) -> None:
    sc = base_scenario()
    sc["processes"] = []
    rig = sim_rig(sc)
    rig.run_until(20)
    assert rig.counters(GPU_A, "ns1", "p1") == (10_000, 0)
