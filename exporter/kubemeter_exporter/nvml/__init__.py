"""NVML backends: the protocol, the real pynvml backend and the simulated one."""

from kubemeter_exporter.nvml.base import (
    DeviceSample,
    GpuInfo,
    MigInfo,
    NvmlBackend,
    NvmlError,
    NvmlGpuLostError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlUnavailableError,
    ProcessInfo,
    ProcessUtilSample,
)

__all__ = [
    "DeviceSample",
    "GpuInfo",
    "MigInfo",
    "NvmlBackend",
    "NvmlError",
    "NvmlGpuLostError",
    "NvmlNotFoundError",
    "NvmlNotSupportedError",
    "NvmlUnavailableError",
    "ProcessInfo",
    "ProcessUtilSample",
]
