"""The pynvml backend against a mocked pynvml (the real one needs a GPU)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from kubemeter_exporter.nvml.base import (
    NvmlGpuLostError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlUnavailableError,
)
from kubemeter_exporter.nvml.real import RealNvml, mig_profile_from_name

G0 = "GPU-00000000-0000-0000-0000-000000000000"
G1 = "GPU-11111111-0000-0000-0000-000000000000"
M1 = "MIG-11111111-aaaa-0000-0000-000000000000"


class FakeLib:
    """Enough of pynvml's device API: handle 0 = L4, handle 1 = A100 with one MIG."""

    def __init__(self) -> None:
        self.lost: set[str] = set()
        self.proc_util: Any = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def err(code: int) -> pynvml.NVMLError:
            return pynvml.NVMLError(code)

        def check(h: str) -> None:
            if h in self.lost:
                raise err(pynvml.NVML_ERROR_GPU_IS_LOST)

        names = {
            "h0": "NVIDIA L4",
            "h1": "NVIDIA A100-SXM4-40GB",
            "m1": "NVIDIA A100-SXM4-40GB MIG 1g.5gb",
        }
        uuids = {"h0": G0, "h1": G1, "m1": M1}
        fns: dict[str, Any] = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda i: f"h{i}",
            "nvmlDeviceGetUUID": lambda h: (check(h), uuids[h])[1],
            "nvmlDeviceGetName": lambda h: names[h].encode(),
            "nvmlDeviceGetMemoryInfo": lambda h: (check(h), SimpleNamespace(total=100, used=40))[1],
            "nvmlDeviceGetMigMode": lambda h: (
                [1, 1] if h == "h1" else (_ for _ in ()).throw(err(pynvml.NVML_ERROR_NOT_SUPPORTED))
            ),
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 2,
            "nvmlDeviceGetMigDeviceHandleByIndex": lambda h, j: (
                "m1" if j == 0 else (_ for _ in ()).throw(err(pynvml.NVML_ERROR_NOT_FOUND))
            ),
            "nvmlDeviceGetGpuInstanceId": lambda h: 7,
            "nvmlDeviceGetUtilizationRates": lambda h: (
                SimpleNamespace(gpu=55)
                if h == "h0"
                else (_ for _ in ()).throw(err(pynvml.NVML_ERROR_NOT_SUPPORTED))
            ),
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [
                SimpleNamespace(pid=11, usedGpuMemory=1 << 20),
                SimpleNamespace(pid=12, usedGpuMemory=None),
            ],
            "nvmlDeviceGetProcessUtilization": self._proc_util,
        }
        for name, fn in fns.items():
            mp.setattr(pynvml, name, fn)

    def _proc_util(self, h: str, ts: int) -> Any:
        if isinstance(self.proc_util, int):
            raise pynvml.NVMLError(self.proc_util)
        return self.proc_util


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> FakeLib:
    f = FakeLib()
    f.install(monkeypatch)
    return f


def test_enumeration_with_mig(lib: FakeLib) -> None:
    nv = RealNvml()
    nv.init()
    gpus = nv.list_gpus()
    assert [g.uuid for g in gpus] == [G0, G1]
    assert gpus[0].model == "NVIDIA L4"
    assert not gpus[0].mig_enabled
    assert gpus[1].mig_enabled
    (mig,) = gpus[1].mig_instances
    assert (mig.uuid, mig.profile, mig.parent_uuid, mig.gpu_instance_id) == (M1, "1g.5gb", G1, 7)


def test_samples_and_error_mapping(lib: FakeLib) -> None:
    nv = RealNvml()
    nv.init()
    nv.list_gpus()
    assert nv.device_sample(G0).utilization == 55
    assert nv.device_sample(M1).utilization is None  # NOT_SUPPORTED on MIG -> None
    procs = nv.compute_processes(G0)
    assert [(p.pid, p.memory_used) for p in procs] == [(11, 1 << 20), (12, 0)]
    lib.proc_util = [SimpleNamespace(pid=11, timeStamp=5, smUtil=42)]
    (s,) = nv.process_utilization(G0, 0)
    assert (s.pid, s.timestamp_us, s.sm_util) == (11, 5, 42)
    lib.proc_util = pynvml.NVML_ERROR_NOT_FOUND
    with pytest.raises(NvmlNotFoundError):
        nv.process_utilization(G0, 5)
    lib.proc_util = pynvml.NVML_SUCCESS  # pynvml's "zero samples" quirk
    with pytest.raises(NvmlNotFoundError):
        nv.process_utilization(G0, 5)
    lib.proc_util = pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(NvmlNotSupportedError):
        nv.process_utilization(M1, 5)
    lib.lost.add("h0")
    with pytest.raises(NvmlGpuLostError):
        nv.device_sample(G0)
    # A lost GPU is left out of the enumeration instead of hiding the others.
    assert [g.uuid for g in nv.list_gpus()] == [G1]
    assert nv.lost_gpus == [0]


def test_init_failure_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", boom)
    with pytest.raises(NvmlUnavailableError) as ei:
        RealNvml().init()
    assert ei.value.reason == "library_not_found"
    assert isinstance(ei.value.__cause__, pynvml.NVMLError)


def test_mig_profile_from_name() -> None:
    assert mig_profile_from_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "1g.10gb"
    assert mig_profile_from_name("NVIDIA A100-SXM4-40GB MIG 3g.20gb+me") == "3g.20gb+me"
