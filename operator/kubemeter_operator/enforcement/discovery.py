"""Which of a Tenant's workloads enforcement stops. Pure (plain dicts from the API server).

A workload is the Tenant's when it is in one of the Tenant's namespaces (a namespace claimed
by two Tenants belongs to neither) and its pod template's labels match the Tenant's pod
selector. It is a GPU workload when its pod template requests a GPU resource
(`kube.gpu.GpuResources`). Deployments, StatefulSets, Jobs and CronJobs are found by kind;
a Pod is "bare" when no controller owns it (pods of a ReplicaSet, StatefulSet or Job stop
with their controller). Finished Jobs are left alone: they run nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.kube.gpu import GpuResources, pod_template_labels, pod_template_spec

SCALED = ("Deployment", "StatefulSet")
SUSPENDED = ("Job", "CronJob")


@dataclass(frozen=True)
class Workload:
    """A GPU workload as it is now."""

    kind: str
    namespace: str
    name: str
    uid: str
    replicas: int | None
    """spec.replicas (Deployments and StatefulSets; absent means 1)."""
    suspend: bool | None
    """spec.suspend (Jobs and CronJobs)."""
    running: int
    """Pods it has now (status.replicas, status.active; 1 for a running Pod)."""
    generation: int
    obj: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def stopped(self) -> bool:
        """Its spec says stopped (replicas 0, suspend true)."""
        if self.kind in SCALED:
            return self.replicas == 0
        if self.kind in SUSPENDED:
            return bool(self.suspend)
        return False


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _controlled(obj: Mapping[str, Any]) -> bool:
    refs = _meta(obj).get("ownerReferences") or []
    return any(isinstance(r, Mapping) and r.get("controller") for r in refs)


def _finished(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("completionTime"):
        return True
    for c in status.get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def _pod_done(obj: Mapping[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def workload(kind: str, obj: Mapping[str, Any]) -> Workload:
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    replicas: int | None = None
    suspend: bool | None = None
    if kind in SCALED:
        replicas = _int(spec.get("replicas"), 1)
        running = _int(status.get("replicas"))
    elif kind == "Job":
        suspend = bool(spec.get("suspend", False))
        running = _int(status.get("active"))
    elif kind == "CronJob":
        suspend = bool(spec.get("suspend", False))
        running = len(status.get("active") or [])
    else:
        running = 0 if _pod_done(obj) else 1
    return Workload(
        kind=kind,
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        replicas=replicas,
        suspend=suspend,
        running=running,
        generation=_int(meta.get("generation")),
        obj=obj,
    )


def gpu_workloads(
    tenant: Tenant,
    kind: str,
    objects: Sequence[Mapping[str, Any]],
    gpu: GpuResources,
) -> list[Workload]:
    """The Tenant's GPU workloads among `objects` (all of one kind, in its namespaces)."""
    selector = tenant.spec.pod_selector
    out: list[Workload] = []
    for obj in objects:
        if _meta(obj).get("deletionTimestamp"):
            continue
        if kind == "Pod" and (_controlled(obj) or _pod_done(obj)):
            continue
        if kind == "Job" and _finished(obj):
            continue
        if not gpu.requests_gpu(pod_template_spec(kind, obj)):
            continue
        if selector is not None and not selector.matches(pod_template_labels(kind, obj)):
            continue
        out.append(workload(kind, obj))
    return out
