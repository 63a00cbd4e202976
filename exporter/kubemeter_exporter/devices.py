"""The node's accountable devices and the mapping of kubelet device IDs onto them.

A physical GPU without MIG is one accountable device; a GPU with MIG enabled is accounted
through its MIG instances. Kubelet device IDs map as follows:

* ``GPU-<uuid>`` -> that GPU; ``GPU-<uuid>::N`` (time-slicing replica) -> that GPU;
* ``MIG-<uuid>`` -> that MIG instance; ``MIG-GPU-<uuid>/<gi>/<ci>`` (old form) -> the MIG
  instance with that parent and GPU instance id;
* ``<n>`` (device plugin ``--device-id-strategy=index``) -> GPU with that index;
* anything else -> ``None`` (not a GPU we know, e.g. another resource).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubemeter_exporter.nvml.base import GpuInfo


@dataclass(frozen=True, slots=True)
class Device:
    uuid: str
    index: str  # "0", or "0/3" for MIG device 3 of GPU 0
    model: str
    mig_profile: str  # "" for a whole GPU
    parent_uuid: str  # "" for a whole GPU
    memory_total: int


class Topology:
    def __init__(self, gpus: list[GpuInfo]) -> None:
        self.gpus = gpus
        self.devices: dict[str, Device] = {}
        self.physical: dict[str, Device] = {}
        self._by_index: dict[str, str] = {}
        self._by_gi: dict[tuple[str, int], str] = {}
        for g in gpus:
            phys = Device(g.uuid, str(g.index), g.model, "", "", g.memory_total)
            self.physical[g.uuid] = phys
            self._by_index[str(g.index)] = g.uuid
            if g.mig_enabled:
                for m in g.mig_instances:
                    self.devices[m.uuid] = Device(
                        m.uuid, f"{g.index}/{m.index}", g.model, m.profile, g.uuid, m.memory_total
                    )
                    if m.gpu_instance_id >= 0:
                        self._by_gi[(g.uuid, m.gpu_instance_id)] = m.uuid
            else:
                self.devices[g.uuid] = phys
        self._cache: dict[str, str | None] = {}

    def resolve(self, device_id: str) -> str | None:
        """Map a kubelet device ID to an accountable device UUID."""
        try:
            return self._cache[device_id]
        except KeyError:
            pass
        result = self._resolve(device_id)
        self._cache[device_id] = result
        return result

    def _resolve(self, device_id: str) -> str | None:
        did = device_id.strip()
        if "::" in did:
            did = did.split("::", 1)[0]
        if did in self.devices:
            return did
        if did.startswith("MIG-GPU-"):
            parts = did[len("MIG-") :].split("/")
            if len(parts) >= 2 and parts[1].isdigit():
                return self._by_gi.get((parts[0], int(parts[1])))
            return None
        if did.isdigit():
            uuid = self._by_index.get(did)
            return uuid if uuid in self.devices else None
        return None
