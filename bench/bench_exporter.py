"""Exporter benchmark: CPU and wall time per collection and resident memory for
8 simulated GPUs x 64 processes each and a pod cache of 500 pods.

Targets (PRODUCT.md): <= 10 ms CPU per collection, <= 60 MB RSS. Prints figures only.

    .venv/bin/python bench/bench_exporter.py [--collections 300]

Two figures per collection: "simulated" (the whole pipeline including the simulated NVML
backend's own work) and "exporter only" (a replay backend returning prebuilt NVML answers,
i.e. the exporter's cost when NVML itself is cheap, as the real driver's calls are).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

import procstat
from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import ManualClock
from kubemeter_exporter.collector import Collector
from kubemeter_exporter.nvml.base import (
    DeviceSample,
    GpuInfo,
    ProcessInfo,
    ProcessUtilSample,
)
from kubemeter_exporter.scenario import Scenario
from kubemeter_exporter.server import make_registry
from kubemeter_exporter.simulation import SimulatedNode

N_GPUS, PROCS_PER_GPU, PODS_PER_GPU, CACHE_PODS = 8, 64, 32, 500


def scenario() -> Scenario:
    gpus, pods, procs = [], [], []
    pid = 1000
    for g in range(N_GPUS):
        uuid = f"GPU-{g:08x}-0000-4000-8000-000000000000"
        gpus.append({"uuid": uuid, "model": "NVIDIA H100 80GB HBM3"})
        for k in range(PODS_PER_GPU):
            i = g * PODS_PER_GPU + k
            name = f"pod-{i}"
            pods.append(
                {
                    "namespace": f"ns-{i % 20}",
                    "name": name,
                    "uid": f"{i:08x}-1111-4111-8111-111111111111",
                    "labels": {"app": name, "team": f"t{i % 7}"},
                    "allocations": [{"devices": [f"{uuid}::{k}"]}],
                }
            )
            for _ in range(PROCS_PER_GPU // PODS_PER_GPU):
                procs.append(
                    {
                        "pid": pid,
                        "pod": f"ns-{i % 20}/{name}",
                        "device": uuid,
                        "sm_util": 1 + pid % 3,
                        "memory_mib": 512,
                    }
                )
                pid += 1
    for i in range(N_GPUS * PODS_PER_GPU, CACHE_PODS):  # pods on the node without GPUs
        pods.append(
            {"namespace": "cpu", "name": f"cpu-{i}", "uid": f"{i:08x}-2222-4222-8222-222222222222"}
        )
    return Scenario.model_validate(
        {"node": "bench", "gpus": gpus, "pods": pods, "processes": procs}
    )


class ReplayNvml:
    """Prebuilt answers copied from the simulated backend at t=0; timestamps advance."""

    name = "replay"

    def __init__(self, sim: Any) -> None:
        sim.init()
        self.gpus: list[GpuInfo] = sim.list_gpus()
        self.samples: dict[str, DeviceSample] = {}
        self.procs: dict[str, list[ProcessInfo]] = {}
        self.util: dict[str, list[tuple[int, int]]] = {}
        for g in self.gpus:
            self.samples[g.uuid] = sim.device_sample(g.uuid)
            self.procs[g.uuid] = sim.compute_processes(g.uuid)
            self.util[g.uuid] = [(s.pid, s.sm_util) for s in sim.process_utilization(g.uuid, 0)]
        self.ts = 0

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str:
        return "replay"

    def list_gpus(self) -> list[GpuInfo]:
        return self.gpus

    def device_sample(self, uuid: str) -> DeviceSample:
        return self.samples[uuid]

    def compute_processes(self, uuid: str) -> list[ProcessInfo]:
        return self.procs[uuid]

    def process_utilization(self, uuid: str, last_seen_us: int) -> list[ProcessUtilSample]:
        ts = last_seen_us + 5_000_000
        return [ProcessUtilSample(pid, ts, u) for pid, u in self.util[uuid]]


def run(label: str, collector: Collector, clock: ManualClock, n: int) -> None:
    for _ in range(5):  # warm up: caches filled, series created
        clock.advance(5)
        collector.sample()
    cpu, wall = [], []
    gc.collect()
    for _ in range(n):
        clock.advance(5)
        c0, w0 = time.process_time(), time.perf_counter()
        collector.sample()
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    registry = make_registry(collector)
    s0 = time.process_time()
    for _ in range(20):
        body = generate_latest(registry)
    scrape_ms = (time.process_time() - s0) * 1e3 / 20
    cpu.sort()
    p95 = cpu[int(0.95 * len(cpu)) - 1]
    print(
        f"{label:<14} per collection: CPU mean {statistics.fmean(cpu):6.2f} ms, "
        f"p50 {statistics.median(cpu):6.2f} ms, p95 {p95:6.2f} ms; "
        f"wall mean {statistics.fmean(wall):6.2f} ms | scrape render {scrape_ms:6.2f} ms CPU, "
        f"{len(body) / 1024:.0f} KiB, {len(collector.series)} pod series, "
        f"{len(collector.processes)} process rows"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collections", type=int, default=300)
    args = ap.parse_args()
    base_rss = procstat.memory_mb()[0]
    sc = scenario()
    with tempfile.TemporaryDirectory(prefix="kubemeter-bench-") as tmp:
        clock = ManualClock()
        node = SimulatedNode(sc, clock, proc_root=Path(tmp) / "proc")
        print(
            f"setup: {N_GPUS} GPUs x {PROCS_PER_GPU} processes ({N_GPUS * PROCS_PER_GPU} PIDs, "
            f"{N_GPUS * PODS_PER_GPU} GPU pods), pod cache {len(node.pods)} pods, "
            f"{args.collections} collections at a 5 s simulated interval"
        )

        def collector(backend: Any) -> Collector:
            return Collector(
                backend,
                node.pod_resources,
                node.pods,
                ProcCgroupReader(node.proc_root),
                node="bench",
                interval_s=5,
                clock=clock,
                instance="bench",
            )

        run("simulated", collector(node.backend), clock, args.collections)
        replay_clock = clock
        run("exporter only", collector(ReplayNvml(node.backend)), replay_clock, args.collections)
        cur, peak = procstat.memory_mb()
        print(
            f"memory: RSS now {cur:.1f} MB, peak {peak:.1f} MB "
            f"(interpreter + imports before setup: {base_rss:.1f} MB)"
        )
        print("targets: <= 10 ms CPU per collection, <= 60 MB RSS")


if __name__ == "__main__":
    main()
