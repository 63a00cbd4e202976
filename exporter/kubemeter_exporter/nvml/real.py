"""The real NVML backend (``nvidia-ml-py``, imported as ``pynvml``)."""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

from kubemeter_exporter.nvml.base import (
    DeviceSample,
    GpuInfo,
    MigInfo,
    NvmlError,
    NvmlGpuLostError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlUnavailableError,
    ProcessInfo,
    ProcessUtilSample,
)

_MIG_PROFILE_RE = re.compile(r"MIG\s+(\S+)\s*$")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def mig_profile_from_name(name: str) -> str:
    """``"NVIDIA A100-SXM4-40GB MIG 1g.5gb"`` -> ``"1g.5gb"``."""
    m = _MIG_PROFILE_RE.search(name)
    return m.group(1) if m else name


def _convert(err: Exception, what: str) -> NvmlError:
    """Wrap a ``pynvml.NVMLError`` in our error types."""
    import pynvml

    code = getattr(err, "value", None)
    msg = f"{what}: {err}"
    if code in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED):
        return NvmlGpuLostError(msg, code=code)
    if code == pynvml.NVML_ERROR_NOT_FOUND:
        return NvmlNotFoundError(msg, code=code)
    if code == pynvml.NVML_ERROR_NOT_SUPPORTED:
        return NvmlNotSupportedError(msg, code=code)
    if code in (
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    ):
        reason = {
            pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "library_not_found",
            pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
        }.get(code, "uninitialized")
        return NvmlUnavailableError(msg, reason=reason, code=code)
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return NvmlError(msg, reason="no_permission", code=code)
    return NvmlError(msg, reason="unknown", code=code)


class RealNvml:
    """NVML through pynvml. All calls are serialised by a lock (NVML is thread-safe, but the
    handle map is ours)."""

    name = "nvml"

    def __init__(self) -> None:
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._initialised = False
        self.lost_gpus: list[int] = []

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise NvmlUnavailableError("pynvml not installed", reason="library_not_found") from exc
        with self._lock:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                err = _convert(exc, "nvmlInit")
                if not isinstance(err, NvmlUnavailableError):
                    err = NvmlUnavailableError(str(err), reason="init", code=err.code)
                raise err from exc
            self._initialised = True
            self._handles.clear()

    def shutdown(self) -> None:
        import pynvml

        with self._lock:
            if self._initialised:
                with contextlib.suppress(pynvml.NVMLError):
                    pynvml.nvmlShutdown()
            self._initialised = False
            self._handles.clear()

    def driver_version(self) -> str:
        import pynvml

        try:
            return _s(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as exc:
            raise _convert(exc, "nvmlSystemGetDriverVersion") from exc

    def list_gpus(self) -> list[GpuInfo]:
        import pynvml

        gpus: list[GpuInfo] = []
        handles: dict[str, Any] = {}
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise _convert(exc, "nvmlDeviceGetCount") from exc
        self.lost_gpus = []
        for i in range(count):
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _s(pynvml.nvmlDeviceGetUUID(h))
                model = _s(pynvml.nvmlDeviceGetName(h))
                mem = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
            except pynvml.NVMLError as exc:
                err = _convert(exc, f"GPU {i}")
                if isinstance(err, NvmlGpuLostError):
                    # One GPU off the bus must not hide the others.
                    self.lost_gpus.append(i)
                    continue
                raise err from exc
            handles[uuid] = h
            mig_enabled = False
            migs: list[MigInfo] = []
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(h)
                mig_enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig_enabled = False
            if mig_enabled:
                try:
                    max_mig = pynvml.nvmlDeviceGetMaxMigDeviceCount(h)
                except pynvml.NVMLError as exc:
                    raise _convert(exc, f"GPU {i} MIG count") from exc
                for j in range(max_mig):
                    try:
                        mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except pynvml.NVMLError:
                        continue  # empty slot (NOT_FOUND)
                    try:
                        muuid = _s(pynvml.nvmlDeviceGetUUID(mh))
                        mname = _s(pynvml.nvmlDeviceGetName(mh))
                        mmem = int(pynvml.nvmlDeviceGetMemoryInfo(mh).total)
                    except pynvml.NVMLError as exc:
                        raise _convert(exc, f"GPU {i} MIG {j}") from exc
                    try:
                        gi = int(pynvml.nvmlDeviceGetGpuInstanceId(mh))
                    except pynvml.NVMLError:
                        gi = -1
                    handles[muuid] = mh
                    migs.append(
                        MigInfo(
                            uuid=muuid,
                            index=j,
                            profile=mig_profile_from_name(mname),
                            memory_total=mmem,
                            parent_uuid=uuid,
                            gpu_instance_id=gi,
                        )
                    )
            gpus.append(
                GpuInfo(
                    uuid=uuid,
                    index=i,
                    model=model,
                    memory_total=mem,
                    mig_enabled=mig_enabled,
                    mig_instances=tuple(migs),
                )
            )
        with self._lock:
            self._handles = handles
        return gpus

    def _handle(self, uuid: str) -> Any:
        with self._lock:
            h = self._handles.get(uuid)
        if h is None:
            raise NvmlError(f"unknown device {uuid}", reason="unknown_device")
        return h

    def device_sample(self, uuid: str) -> DeviceSample:
        import pynvml

        h = self._handle(uuid)
        try:
            mem = int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
        except pynvml.NVMLError as exc:
            raise _convert(exc, f"{uuid} memory") from exc
        util: int | None
        try:
            util = int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except pynvml.NVMLError as exc:
            err = _convert(exc, f"{uuid} utilization")
            if isinstance(err, NvmlNotSupportedError):
                util = None
            else:
                raise err from exc
        return DeviceSample(memory_used=mem, utilization=util)

    def compute_processes(self, uuid: str) -> list[ProcessInfo]:
        import pynvml

        h = self._handle(uuid)
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        except pynvml.NVMLError as exc:
            raise _convert(exc, f"{uuid} processes") from exc
        out: list[ProcessInfo] = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out.append(ProcessInfo(pid=int(p.pid), memory_used=int(used) if used else 0))
        return out

    def process_utilization(self, uuid: str, last_seen_us: int) -> list[ProcessUtilSample]:
        import pynvml

        h = self._handle(uuid)
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(h, last_seen_us)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) == pynvml.NVML_SUCCESS:
                # pynvml raises NVMLError(SUCCESS) when the driver reports zero samples.
                raise NvmlNotFoundError(f"{uuid}: no samples", code=0) from exc
            raise _convert(exc, f"{uuid} process utilization") from exc
        return [
            ProcessUtilSample(pid=int(s.pid), timestamp_us=int(s.timeStamp), sm_util=int(s.smUtil))
            for s in samples
        ]
