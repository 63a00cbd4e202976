"""The collector's use of NVML's last-seen timestamps and error handling (mock backend)."""

from __future__ import annotations

from pathlib import Path

from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import ManualClock
from kubemeter_exporter.collector import Collector
from kubemeter_exporter.nvml.base import (
    DeviceSample,
    GpuInfo,
    NvmlNotFoundError,
    NvmlUnavailableError,
    ProcessInfo,
    ProcessUtilSample,
)

G = "GPU-00000000-0000-0000-0000-000000000000"


class FakeNvml:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.batches: list[list[ProcessUtilSample] | None] = []
        self.init_fails = 0

    def init(self) -> None:
        if self.init_fails:
            self.init_fails -= 1
            raise NvmlUnavailableError("no driver", reason="library_not_found")

    def shutdown(self) -> None:
        pass

    def driver_version(self) -> str:
        return "fake"

    def list_gpus(self) -> list[GpuInfo]:
        return [GpuInfo(G, 0, "NVIDIA L4", 1)]

    def device_sample(self, uuid: str) -> DeviceSample:
        return DeviceSample(0, 50)

    def compute_processes(self, uuid: str) -> list[ProcessInfo]:
        return [ProcessInfo(1, 0), ProcessInfo(2, 0)]

    def process_utilization(self, uuid: str, last_seen_us: int) -> list[ProcessUtilSample]:
        self.calls.append(last_seen_us)
        batch = self.batches.pop(0)
        if batch is None:
            raise NvmlNotFoundError("none")
        return batch


def test_last_seen_timestamp_progression_no_double_read(tmp_path: Path) -> None:
    nv = FakeNvml()
    s = ProcessUtilSample
    nv.batches = [
        [s(1, 100, 10), s(2, 100, 20)],
        [s(1, 100, 99), s(1, 200, 30), s(2, 150, 40)],  # ts 100 already read: ignored
        None,  # NVML_ERROR_NOT_FOUND: no new samples
        [s(1, 300, 50), s(1, 400, 70)],  # two samples of one PID: mean 60
    ]
    clock = ManualClock()
    col = Collector(nv, None, None, ProcCgroupReader(tmp_path), node="n", clock=clock, instance="i")
    for _ in range(4):
        col.sample()
        clock.advance(1)
    assert nv.calls == [0, 100, 200, 200]
    # Unattributed bucket: interval 2 share = 30 + 40 = 70 %, interval 3 = 0, interval 4 = 60 %.
    (series,) = col.series.values()
    assert (series.allocated_ms, series.active_ms) == (3000, 700 + 0 + 600)
    assert col.device_state[G].last_seen_us == 400
    rows = {r.pid: r.sm_util for r in col.processes}
    assert rows == {1: 60.0, 2: 0.0}


def test_missing_driver_keeps_serving_and_retries(tmp_path: Path) -> None:
    nv = FakeNvml()
    nv.init_fails = 3
    nv.batches = [None] * 10
    clock = ManualClock()
    col = Collector(nv, None, None, ProcCgroupReader(tmp_path), node="n", clock=clock)
    for _ in range(5):
        col.sample()
        clock.advance(1)
    assert col.health.nvml_errors == {"library_not_found": 3}
    assert col.health.nvml_up
    assert col.health.samples == 2
