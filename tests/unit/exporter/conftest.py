"""Fixtures for the exporter unit tests: a simulated node driven by a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import ManualClock
from kubemeter_exporter.collector import Collector
from kubemeter_exporter.scenario import Scenario
from kubemeter_exporter.simulation import SimulatedNode


class SimRig:
    def __init__(self, scenario: dict[str, Any], proc_root: Path, **collector_kw: Any) -> None:
        self.scenario = Scenario.model_validate(scenario)
        self.clock = ManualClock()
        self.node = SimulatedNode(self.scenario, self.clock, proc_root=proc_root)
        kw: dict[str, Any] = {"node": self.scenario.node, "interval_s": 1.0, "instance": "test"}
        kw.update(collector_kw)
        self.collector = Collector(
            self.node.backend,
            self.node.pod_resources,
            None,
            ProcCgroupReader(proc_root),
            clock=self.clock,
            **kw,
        )

    def run_until(self, end_s: float, step_ms: int = 1000) -> None:
        """Sample now, then every step until the clock reaches end_s (inclusive)."""
        self.collector.sample()
        while self.clock.monotonic_ns() + step_ms * 1_000_000 <= round(end_s * 1e9):
            self.clock.advance(ms=step_ms)
            self.collector.sample()

    def counters(self, uuid: str, namespace: str, pod: str) -> tuple[int, int]:
        """(allocated, active) ms of a pod on a device, summed over its series (the series
        with pod_uid="" before its processes were bound to it, and the one after)."""
        found = [
            (s.allocated_ms, s.active_ms)
            for (u, ns, name, _uid), s in self.collector.series.items()
            if (u, ns, name) == (uuid, namespace, pod)
        ]
        if not found:
            raise KeyError((uuid, namespace, pod))
        return sum(a for a, _ in found), sum(b for _, b in found)

    def uid_counters(self, uuid: str, pod_uid: str) -> tuple[int, int]:
        """(allocated, active) ms of the series billed by pod UID alone."""
        s = self.collector.series[(uuid, "", "", pod_uid)]
        return s.allocated_ms, s.active_ms


@pytest.fixture
def sim_rig(tmp_path: Path) -> Callable[..., SimRig]:
    made: list[SimRig] = []

    def make(scenario: dict[str, Any], **kw: Any) -> SimRig:
        rig = SimRig(scenario, tmp_path / f"proc{len(made)}", **kw)
        made.append(rig)
        return rig

    return make
