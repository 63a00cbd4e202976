"""The simulated-NVML scenario file (YAML), validated with pydantic.

Times are seconds since the scenario starts (the simulated clock's zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CgroupStyle = Literal["cgroupfs-v1", "systemd-v1", "cgroupfs-v2", "systemd-v2"]
CGROUP_STYLES: tuple[CgroupStyle, ...] = ("systemd-v2", "cgroupfs-v1", "systemd-v1", "cgroupfs-v2")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeWindow(_Model):
    start: float = Field(default=0.0, ge=0, description="seconds since scenario start")
    end: float | None = Field(default=None, description="seconds; null = never ends")

    @model_validator(mode="after")
    def _check_window(self) -> TimeWindow:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self

    @property
    def start_ms(self) -> int:
        return _ms(self.start)

    @property
    def end_ms(self) -> int | None:
        return None if self.end is None else _ms(self.end)

    def active_at(self, t_ms: int) -> bool:
        end = self.end_ms
        return self.start_ms <= t_ms and (end is None or t_ms < end)

    def overlap_ms(self, a_ms: float, b_ms: float) -> float:
        end = self.end_ms if self.end_ms is not None else b_ms
        return max(0.0, min(b_ms, end) - max(a_ms, self.start_ms))


class MigSpec(_Model):
    uuid: str = Field(pattern=r"^MIG-")
    profile: str = Field(description="e.g. 1g.10gb")
    memory_mib: int = Field(gt=0)
    gpu_instance_id: int = -1


class GpuSpec(_Model):
    uuid: str = Field(pattern=r"^GPU-")
    index: int | None = None
    model: str = "NVIDIA H100 80GB HBM3"
    memory_mib: int = Field(default=81559, gt=0)
    process_utilization: bool = Field(
        default=True, description="false: nvmlDeviceGetProcessUtilization is NOT_SUPPORTED"
    )
    mig: list[MigSpec] = Field(default_factory=list)


class AllocationSpec(TimeWindow):
    container: str = "main"
    resource: str = "nvidia.com/gpu"
    devices: list[str] = Field(min_length=1, description="device IDs as the kubelet reports them")


class PodSpec(_Model):
    namespace: str
    name: str
    uid: str
    labels: dict[str, str] = Field(default_factory=dict)
    cgroup: CgroupStyle | None = None
    runtime: Literal["containerd", "crio", "docker"] = "containerd"
    qos: Literal["guaranteed", "burstable", "besteffort"] = "burstable"
    allocations: list[AllocationSpec] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ProcessSpec(TimeWindow):
    pid: int = Field(gt=1)
    pod: str | None = Field(default=None, description="namespace/name; null = host process")
    container: str = "main"
    device: str = Field(description="GPU or MIG UUID the process runs on")
    sm_util: int = Field(ge=0, le=100)
    memory_mib: int = Field(default=0, ge=0)


class FaultSpec(TimeWindow):
    kind: Literal["gpu_lost", "nvml_unavailable", "process_util_not_supported"]
    gpu: str | None = Field(default=None, description="GPU UUID (not for nvml_unavailable)")


class Scenario(_Model):
    node: str = "sim-node"
    gpus: list[GpuSpec] = Field(min_length=1)
    pods: list[PodSpec] = Field(default_factory=list)
    processes: list[ProcessSpec] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_refs(self) -> Scenario:
        devices = {g.uuid for g in self.gpus} | {m.uuid for g in self.gpus for m in g.mig}
        if len(devices) != len(self.gpus) + sum(len(g.mig) for g in self.gpus):
            raise ValueError("duplicate GPU or MIG uuid")
        pods = {p.key for p in self.pods}
        if len(pods) != len(self.pods):
            raise ValueError("duplicate pod namespace/name")
        if len({p.uid for p in self.pods}) != len(self.pods):
            raise ValueError("duplicate pod uid")
        pids: set[int] = set()
        for i, proc in enumerate(self.processes):
            if proc.pod is not None and proc.pod not in pods:
                raise ValueError(f"processes[{i}].pod: unknown pod {proc.pod!r}")
            if proc.device not in devices:
                raise ValueError(f"processes[{i}].device: unknown device {proc.device!r}")
            if proc.pid in pids:
                raise ValueError(f"processes[{i}].pid: duplicate pid {proc.pid}")
            pids.add(proc.pid)
        for i, fault in enumerate(self.faults):
            if fault.kind != "nvml_unavailable" and fault.gpu not in devices:
                raise ValueError(f"faults[{i}].gpu: unknown device {fault.gpu!r}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return cls.model_validate(data)

    def pod(self, key: str) -> PodSpec:
        for p in self.pods:
            if p.key == key:
                return p
        raise KeyError(key)
