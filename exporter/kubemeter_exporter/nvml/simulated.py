"""A deterministic NVML backend driven by a scenario and an injected clock.

It has the same interface as :class:`~kubemeter_exporter.nvml.real.RealNvml` and mimics
the real driver's behaviour where it matters to the collector:

* ``process_utilization(uuid, last_seen_us)`` returns one sample per process running now,
  stamped ``now`` (microseconds since the scenario started, plus one) with the process's
  SM percentage, like the driver's latest sample; nothing when ``now <= last_seen_us``
  (``NvmlNotFoundError``, as when there is no process);
  ``NvmlNotSupportedError`` on MIG instances and GPUs with ``process_utilization: false``;
* MIG instances report no device utilisation (``None``);
* faults: ``gpu_lost`` (queries on the GPU and its MIG instances raise ``NvmlGpuLostError``, and
  enumeration leaves it out), ``nvml_unavailable`` (init and every call fail),
  ``process_util_not_supported``.
"""

from __future__ import annotations

from kubemeter_exporter.clock import Clock
from kubemeter_exporter.nvml.base import (
    DeviceSample,
    GpuInfo,
    MigInfo,
    NvmlGpuLostError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlUnavailableError,
    ProcessInfo,
    ProcessUtilSample,
)
from kubemeter_exporter.scenario import ProcessSpec, Scenario

MIB = 1024 * 1024


class SimulatedNvml:
    name = "simulated"

    def __init__(self, scenario: Scenario, clock: Clock, *, epoch_ns: int | None = None) -> None:
        self.scenario = scenario
        self.clock = clock
        self.epoch_ns = clock.monotonic_ns() if epoch_ns is None else epoch_ns
        self._initialised = False
        self._procs: dict[str, list[ProcessSpec]] = {}
        self._parent: dict[str, str] = {}
        self._mig: set[str] = set()
        self._proc_util_supported: dict[str, bool] = {}
        for g in scenario.gpus:
            self._parent[g.uuid] = g.uuid
            self._proc_util_supported[g.uuid] = g.process_utilization
            for m in g.mig:
                self._parent[m.uuid] = g.uuid
                self._mig.add(m.uuid)
        for p in scenario.processes:
            self._procs.setdefault(p.device, []).append(p)
        self.calls = 0

    # ---------------------------------------------------------------- time & faults
    def now_ms(self) -> float:
        return (self.clock.monotonic_ns() - self.epoch_ns) / 1e6

    def now_us(self) -> int:
        return (self.clock.monotonic_ns() - self.epoch_ns) // 1000 + 1

    def _fault(self, kind: str, uuid: str | None, t_ms: float) -> bool:
        for f in self.scenario.faults:
            if f.kind != kind:
                continue
            if uuid is not None and f.gpu not in (uuid, self._parent.get(uuid)):
                continue
            end = f.end_ms
            if f.start_ms <= t_ms and (end is None or t_ms < end):
                return True
        return False

    def _check(self, uuid: str | None = None) -> float:
        self.calls += 1
        t = self.now_ms()
        if self._fault("nvml_unavailable", None, t):
            self._initialised = False
            raise NvmlUnavailableError("simulated: driver not loaded", reason="driver_not_loaded")
        if not self._initialised:
            raise NvmlUnavailableError("simulated: NVML not initialised", reason="uninitialized")
        if uuid is not None:
            if uuid not in self._parent:
                raise NvmlGpuLostError(f"simulated: unknown device {uuid}")
            if self._fault("gpu_lost", uuid, t):
                raise NvmlGpuLostError(f"simulated: {uuid} fell off the bus")
        return t

    # ---------------------------------------------------------------- backend API
    def init(self) -> None:
        if self._fault("nvml_unavailable", None, self.now_ms()):
            raise NvmlUnavailableError(
                "simulated: nvmlInit failed (driver not loaded)", reason="init"
            )
        self._initialised = True

    def shutdown(self) -> None:
        self._initialised = False

    def driver_version(self) -> str:
        self._check()
        return "simulated-550.00"

    def list_gpus(self) -> list[GpuInfo]:
        t = self._check()
        out: list[GpuInfo] = []
        for i, g in enumerate(self.scenario.gpus):
            if self._fault("gpu_lost", g.uuid, t):
                continue
            migs = tuple(
                MigInfo(
                    uuid=m.uuid,
                    index=j,
                    profile=m.profile,
                    memory_total=m.memory_mib * MIB,
                    parent_uuid=g.uuid,
                    gpu_instance_id=m.gpu_instance_id,
                )
                for j, m in enumerate(g.mig)
            )
            out.append(
                GpuInfo(
                    uuid=g.uuid,
                    index=g.index if g.index is not None else i,
                    model=g.model,
                    memory_total=g.memory_mib * MIB,
                    mig_enabled=bool(g.mig),
                    mig_instances=migs,
                )
            )
        return out

    def _alive(self, uuid: str, t_ms: float) -> list[ProcessSpec]:
        return [p for p in self._procs.get(uuid, ()) if p.active_at(int(t_ms))]

    def device_sample(self, uuid: str) -> DeviceSample:
        t = self._check(uuid)
        alive = self._alive(uuid, t)
        mem = sum(p.memory_mib for p in alive) * MIB
        util = None if uuid in self._mig else min(100, sum(p.sm_util for p in alive))
        return DeviceSample(memory_used=mem, utilization=util)

    def compute_processes(self, uuid: str) -> list[ProcessInfo]:
        t = self._check(uuid)
        alive = self._alive(uuid, t)
        return [ProcessInfo(pid=p.pid, memory_used=p.memory_mib * MIB) for p in alive]

    def process_utilization(self, uuid: str, last_seen_us: int) -> list[ProcessUtilSample]:
        t = self._check(uuid)
        if (
            uuid in self._mig
            or not self._proc_util_supported.get(uuid, True)
            or self._fault("process_util_not_supported", uuid, t)
        ):
            raise NvmlNotSupportedError(f"simulated: no per-process utilisation on {uuid}")
        now_us = self.now_us()
        if now_us <= last_seen_us:
            raise NvmlNotFoundError("simulated: no new samples")
        out = [
            ProcessUtilSample(pid=p.pid, timestamp_us=now_us, sm_util=p.sm_util)
            for p in self._alive(uuid, t)
        ]
        if not out:
            raise NvmlNotFoundError("simulated: no new samples")
        return out
