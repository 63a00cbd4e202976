"""The NVML backend protocol shared by the real (pynvml) and simulated backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class NvmlError(Exception):
    """An NVML call failed. ``reason`` is a short, label-safe code used in metrics."""

    reason: str = "unknown"

    def __init__(self, message: str, *, reason: str | None = None, code: int | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.code = code


class NvmlUnavailableError(NvmlError):
    """NVML cannot be used at all (library missing, driver not loaded, init failed)."""

    reason = "init"


class NvmlGpuLostError(NvmlError):
    """The GPU fell off the bus or needs a reset."""

    reason = "gpu_lost"


class NvmlNotFoundError(NvmlError):
    """The query found nothing (e.g. no new process utilisation samples)."""

    reason = "not_found"


class NvmlNotSupportedError(NvmlError):
    """The device does not support the query."""

    reason = "not_supported"


@dataclass(frozen=True, slots=True)
class MigInfo:
    uuid: str  # "MIG-..."
    index: int  # MIG device index within the parent
    profile: str  # e.g. "1g.10gb"
    memory_total: int  # bytes
    parent_uuid: str
    gpu_instance_id: int = -1


@dataclass(frozen=True, slots=True)
class GpuInfo:
    uuid: str  # "GPU-..."
    index: int
    model: str  # NVML product name
    memory_total: int  # bytes
    mig_enabled: bool = False
    mig_instances: tuple[MigInfo, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class DeviceSample:
    memory_used: int  # bytes
    utilization: int | None  # percent; None when not supported (MIG)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    memory_used: int  # bytes (0 when NVML cannot tell)


@dataclass(frozen=True, slots=True)
class ProcessUtilSample:
    pid: int
    timestamp_us: int  # NVML CPU timestamp in microseconds
    sm_util: int  # percent


class NvmlBackend(Protocol):
    """What the collector needs from NVML. ``uuid`` is a GPU or a MIG instance UUID."""

    name: str

    def init(self) -> None:
        """Initialise NVML; raises NvmlUnavailableError."""

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def list_gpus(self) -> list[GpuInfo]:
        """Enumerate physical GPUs and their MIG instances."""

    def device_sample(self, uuid: str) -> DeviceSample: ...

    def compute_processes(self, uuid: str) -> list[ProcessInfo]: ...

    def process_utilization(self, uuid: str, last_seen_us: int) -> list[ProcessUtilSample]:
        """Samples newer than ``last_seen_us``; NvmlNotFoundError when there are none,
        NvmlNotSupportedError when the device cannot report per-process utilisation."""
