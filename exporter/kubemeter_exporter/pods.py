"""A fixed set of pods: the simulated node's own pods (``--simulate``) and tests.

The exporter itself reads no pod metadata and no Kubernetes API: the kubelet's
pod-resources API and ``/proc/<pid>/cgroup`` name the pods (``binding.py``), and the
operator, which watches pod metadata, adds the labels. This module only describes the
pods a simulated node runs, so the simulator can write their cgroup files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PodSource(Protocol):
    def get_by_uid(self, uid: str) -> PodInfo | None: ...

    def get_by_name(self, namespace: str, name: str) -> PodInfo | None: ...


class StaticPodSource:
    """A fixed set of pods (simulation, tests)."""

    def __init__(self, pods: Iterable[PodInfo] = ()) -> None:
        self._by_uid: dict[str, PodInfo] = {}
        self._by_name: dict[tuple[str, str], PodInfo] = {}
        for p in pods:
            self.put(p)

    def put(self, pod: PodInfo) -> None:
        self._by_uid[pod.uid] = pod
        self._by_name[(pod.namespace, pod.name)] = pod

    def remove(self, uid: str) -> None:
        pod = self._by_uid.pop(uid, None)
        if pod is not None and self._by_name.get((pod.namespace, pod.name)) is pod:
            del self._by_name[(pod.namespace, pod.name)]

    def get_by_uid(self, uid: str) -> PodInfo | None:
        return self._by_uid.get(uid)

    def get_by_name(self, namespace: str, name: str) -> PodInfo | None:
        return self._by_name.get((namespace, name))

    def __len__(self) -> int:
        return len(self._by_uid)
