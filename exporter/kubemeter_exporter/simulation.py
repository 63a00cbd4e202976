"""A whole simulated node: NVML backend, kubelet pod-resources, pods and a fake ``/proc``.

``SimulatedNode`` writes ``<proc_root>/<pid>/cgroup`` for every scenario process that
belongs to a pod, varying the cgroup layout (v1/v2, systemd/cgroupfs) and runtime naming
across pods, so the real attribution code runs unchanged: pod-resources gives the scenario
pods' names, the cgroup files their UIDs, and the collector joins the two itself
(``binding.py``), as on a real node.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kubemeter_exporter.cgroups import cgroup_text
from kubemeter_exporter.clock import Clock
from kubemeter_exporter.nvml.simulated import SimulatedNvml
from kubemeter_exporter.podresources.client import ContainerAllocation, StaticPodResources
from kubemeter_exporter.pods import PodInfo, StaticPodSource
from kubemeter_exporter.scenario import CGROUP_STYLES, Scenario


def container_id(pod_uid: str, container: str) -> str:
    return hashlib.sha256(f"{pod_uid}/{container}".encode()).hexdigest()


class SimulatedNode:
    def __init__(
        self,
        scenario: Scenario,
        clock: Clock,
        *,
        proc_root: str | Path | None = None,
        epoch_ns: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.clock = clock
        self.backend = SimulatedNvml(scenario, clock, epoch_ns=epoch_ns)
        self._own_proc_root = proc_root is None
        self.proc_root = Path(proc_root or tempfile.mkdtemp(prefix="kubemeter-proc-"))
        self.pods = StaticPodSource(
            PodInfo(p.namespace, p.name, p.uid, dict(p.labels)) for p in scenario.pods
        )
        self.pod_resources = StaticPodResources(self._allocations)
        self._written: dict[int, str] = {}
        self._style = {
            p.key: p.cgroup or CGROUP_STYLES[i % len(CGROUP_STYLES)]
            for i, p in enumerate(scenario.pods)
        }
        self.sync_proc()

    def _uid(self, namespace: str, name: str) -> str | None:
        pod = self.pods.get_by_name(namespace, name)
        return pod.uid if pod else None

    def sync_proc(self) -> None:
        """Write the cgroup files of processes whose pod UID is known (idempotent)."""
        for proc in self.scenario.processes:
            if proc.pid in self._written:
                continue
            d = self.proc_root / str(proc.pid)
            if proc.pod is None:
                text = "0::/system.slice/host-gpu-job.service\n"
            else:
                spec = self.scenario.pod(proc.pod)
                uid = self._uid(spec.namespace, spec.name)
                if uid is None:
                    continue
                text = cgroup_text(
                    uid,
                    container_id(uid, proc.container),
                    style=self._style[spec.key],
                    runtime=spec.runtime,
                    qos=spec.qos,
                )
            if self._written.get(proc.pid) == text:
                continue
            d.mkdir(parents=True, exist_ok=True)
            (d / "cgroup").write_text(text, encoding="utf-8")
            self._written[proc.pid] = text

    def _allocations(self) -> Iterator[ContainerAllocation]:
        t = int(self.backend.now_ms())
        for pod in self.scenario.pods:
            for a in pod.allocations:
                if a.active_at(t):
                    yield ContainerAllocation(
                        namespace=pod.namespace,
                        pod=pod.name,
                        container=a.container,
                        resource=a.resource,
                        device_ids=tuple(a.devices),
                    )

    def close(self) -> None:
        if self._own_proc_root:
            shutil.rmtree(self.proc_root, ignore_errors=True)
