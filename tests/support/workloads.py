"""Simulated GPU workloads for the time-travel harness: the Kubernetes side of enforcement.

`FakeWorkloads` implements `kube.workloads.WorkloadApi` over an in-memory set of
Deployments, StatefulSets, Jobs, CronJobs and Pods, as the API server and the controllers
would keep them, on simulated time:

- every write records its field manager in `managedFields` (for `spec.replicas` or
  `spec.suspend`), so enforcement can name who fought it;
- the "controllers" act at once: a Deployment or StatefulSet runs `spec.replicas` pods, a
  Job runs its pods unless suspended; each running pod holds one simulated H100 in the
  harness (`TimeTravel.gpu`), released when the pod stops. So scaling to 0 really stops
  the spend the operator meters, and the overshoot is what metering saw.

`calls` counts writes, so a test can crash the operator in the middle of a suspend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubemeter_operator.kube.workloads import KEDA_PAUSED, NotFoundError

from support.timeaxis import GpuAllocation

GPU_TEMPLATE = {"containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
CPU_TEMPLATE = {"containers": [{"name": "main", "resources": {"limits": {"cpu": "1"}}}]}


@dataclass
class _Obj:
    kind: str
    body: dict[str, Any]
    pods: list[tuple[str, GpuAllocation | None]] = field(default_factory=list)


class FakeWorkloads:
    def __init__(
        self,
        allocate: Callable[[str, str], GpuAllocation],
        release: Callable[[GpuAllocation], None],
        clock: Callable[[], datetime],
    ) -> None:
        self._allocate = allocate
        self._release = release
        self._clock = clock
        self.objects: dict[tuple[str, str, str], _Obj] = {}
        self.scaled_objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0
        self._uids = 0
        self._pods = 0

    # -- the world (what users create) -----------------------------------------------------

    def create(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        replicas: int = 1,
        suspend: bool = False,
        gpu: bool = True,
        manager: str = "kubectl",
    ) -> None:
        self._uids += 1
        template = copy.deepcopy(GPU_TEMPLATE if gpu else CPU_TEMPLATE)
        spec: dict[str, Any]
        if kind in ("Deployment", "StatefulSet"):
            spec = {"replicas": replicas, "template": {"spec": template}}
        elif kind == "Job":
            spec = {"suspend": suspend, "template": {"spec": template}}
        elif kind == "CronJob":
            spec = {"suspend": suspend, "jobTemplate": {"spec": {"template": {"spec": template}}}}
        else:
            spec = template
        body = {
            "kind": kind,
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{self._uids}",
                         "generation": 1, "managedFields": []},
            "spec": spec,
            "status": {},
        }  # fmt: skip
        self._manage(body, manager, ("replicas" if kind in ("Deployment", "StatefulSet")
                                     else "suspend"), None)  # fmt: skip
        obj = _Obj(kind, body)
        self.objects[(kind, namespace, name)] = obj
        self._reconcile(obj, gpu=gpu)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((kind, namespace, name))
        self._set_pods(obj, 0, gpu=True)

    def scale_by(self, manager: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Someone else (kubectl, an HPA, GitOps) scales it."""
        obj = self.objects[(kind, namespace, name)]
        self._write(obj, "replicas", replicas, manager, "scale")

    def add_scaled_object(self, namespace: str, name: str, target: str) -> None:
        self.scaled_objects[(namespace, name)] = {
            "metadata": {"namespace": namespace, "name": name, "annotations": {}},
            "spec": {"scaleTargetRef": {"name": target}},
        }

    def replicas(self, kind: str, namespace: str, name: str) -> int | None:
        return self.objects[(kind, namespace, name)].body["spec"].get("replicas")

    def suspended(self, kind: str, namespace: str, name: str) -> bool:
        return bool(self.objects[(kind, namespace, name)].body["spec"].get("suspend"))

    def running(self) -> int:
        return sum(len(o.pods) for o in self.objects.values())

    # -- the controllers -------------------------------------------------------------------

    def _gpu(self, obj: _Obj) -> bool:
        return "nvidia.com/gpu" in str(obj.body["spec"])

    def _wanted(self, obj: _Obj) -> int:
        spec = obj.body["spec"]
        if obj.kind in ("Deployment", "StatefulSet"):
            return int(spec.get("replicas", 1))
        if obj.kind == "Job":
            return 0 if spec.get("suspend") else 1
        if obj.kind == "Pod":
            return 1
        return 0  # a CronJob's Jobs are Jobs of their own here

    def _set_pods(self, obj: _Obj, n: int, *, gpu: bool) -> None:
        while len(obj.pods) > n:
            _, alloc = obj.pods.pop()
            if alloc is not None:
                self._release(alloc)
        while len(obj.pods) < n:
            self._pods += 1
            pod = f"{obj.body['metadata']['name']}-{self._pods}"
            alloc = self._allocate(obj.body["metadata"]["namespace"], pod) if gpu else None
            obj.pods.append((pod, alloc))

    def _reconcile(self, obj: _Obj, *, gpu: bool | None = None) -> None:
        self._set_pods(obj, self._wanted(obj), gpu=self._gpu(obj) if gpu is None else gpu)
        status = obj.body["status"]
        if obj.kind in ("Deployment", "StatefulSet"):
            status["replicas"] = len(obj.pods)
        elif obj.kind == "Job":
            status["active"] = len(obj.pods)
        elif obj.kind == "Pod":
            status["phase"] = "Running"

    def _manage(self, body: dict[str, Any], manager: str, fld: str, sub: str | None) -> None:
        entries = [e for e in body["metadata"]["managedFields"] if e["manager"] != manager]
        for e in entries:
            e["fieldsV1"].get("f:spec", {}).pop(f"f:{fld}", None)
        entry: dict[str, Any] = {"manager": manager, "operation": "Update",
                                 "time": self._clock().isoformat(),
                                 "fieldsV1": {"f:spec": {f"f:{fld}": {}}}}  # fmt: skip
        if sub:
            entry["subresource"] = sub
        body["metadata"]["managedFields"] = [*entries, entry]

    def _write(self, obj: _Obj, fld: str, value: Any, manager: str, sub: str | None) -> None:
        if obj.body["spec"].get(fld) != value:
            obj.body["spec"][fld] = value
            obj.body["metadata"]["generation"] += 1
        self._manage(obj.body, manager, fld, sub)
        self._reconcile(obj)

    # -- WorkloadApi -----------------------------------------------------------------------

    def list_kind(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o.body) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and ns == namespace]  # fmt: skip

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj.body) if obj is not None else None

    def _found(self, kind: str, namespace: str, name: str) -> _Obj:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise NotFoundError(f"{kind} {namespace}/{name}: not found")
        return obj

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.calls += 1
        self._write(self._found(kind, namespace, name), "replicas", replicas,
                    "kubemeter-operator", "scale")  # fmt: skip

    def set_suspend(self, kind: str, namespace: str, name: str, suspend: bool) -> None:
        self.calls += 1
        self._write(self._found(kind, namespace, name), "suspend", suspend,
                    "kubemeter-operator", None)  # fmt: skip

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.calls += 1
        obj = self._found("Pod", namespace, name)
        assert obj.body["metadata"]["uid"] == uid
        self.delete("Pod", namespace, name)

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        return []

    def list_scaled_objects(self, namespace: str) -> list[dict[str, Any]] | None:
        return [copy.deepcopy(o) for (ns, _), o in sorted(self.scaled_objects.items())
                if ns == namespace]  # fmt: skip

    def annotate_scaled_object(self, namespace: str, name: str, value: str | None) -> None:
        self.calls += 1
        annotations = self.scaled_objects[(namespace, name)]["metadata"]["annotations"]
        if value is None:
            annotations.pop(KEDA_PAUSED, None)
        else:
            annotations[KEDA_PAUSED] = value
