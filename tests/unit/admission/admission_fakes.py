"""Builders of Tenants, workloads and AdmissionReviews, and fakes of the webhook's API
ports (the certificate Secret, webhook configurations, namespaces), for the admission tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubemeter_operator.admission.certstore import StoredSecret
from kubemeter_operator.admission.review import ReviewContext
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import ConflictError
from kubemeter_operator.kube.gpu import GpuResources

OPERATOR = "system:serviceaccount:kubemeter:km-operator"
GPU = GpuResources()


def tenant(
    name: str,
    namespaces: list[str],
    *,
    state: str | None = "Suspended",
    selector: dict[str, Any] | None = None,
    suspended: list[dict[str, Any]] | None = None,
    trigger: str = "budgetExceeded",
) -> Tenant:
    spec: dict[str, Any] = {
        "pricePlanRef": {"name": "std"},
        "namespaces": namespaces,
        "budget": {"limit": "1000", "enforcement": "scaleDown"},
    }
    if selector is not None:
        spec["podSelector"] = selector
    status: dict[str, Any] = {
        "currency": "USD",
        "total": "1012.40",
        "budget": {"limit": "1000", "used": "1012.40", "usedPercent": "101.24",
                   "remaining": "-12.40"},
        "suspendedWorkloads": suspended or [],
    }  # fmt: skip
    if state is not None:
        status["enforcement"] = {
            "state": state, "trigger": trigger, "reason": "spent", "period": "2026-11",
            "startedAt": "2026-11-20T12:00:00Z", "limit": "1000",
        }  # fmt: skip
    return Tenant.model_validate({"metadata": {"name": name}, "spec": spec, "status": status})


def context(*tenants: Tenant, exempt: tuple[str, ...] = (OPERATOR,)) -> ReviewContext:
    return ReviewContext({t.name: t for t in tenants}, GPU, exempt)


ACME = tenant("acme", ["acme-prod", "acme-dev"])
GLOBEX = tenant("globex", ["globex-ml"], state=None)


def container(gpus: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": "vllm"}
    if gpus is not None:
        c["resources"] = {"limits": gpus}
    return c


def pod_spec(gpus: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"containers": [container(gpus)]}


ONE_GPU = {"nvidia.com/gpu": 1}


def pod(name: str = "p", gpus: dict[str, Any] | None = ONE_GPU, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels}, "spec": pod_spec(gpus)}  # fmt: skip


def deployment(
    replicas: int | None = 2, gpus: dict[str, Any] | None = ONE_GPU, kind: str = "Deployment",
    **labels: str,
) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"template": {"metadata": {"labels": labels}, "spec": pod_spec(gpus)}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"kind": kind, "metadata": {"name": "infer"}, "spec": spec}


def job(
    suspend: bool | None = None, gpus: dict[str, Any] | None = ONE_GPU, kind: str = "Job",
    **labels: str,
) -> dict[str, Any]:  # fmt: skip
    template = {"metadata": {"labels": labels}, "spec": pod_spec(gpus)}
    spec: dict[str, Any] = (
        {"template": template}
        if kind == "Job"
        else {"schedule": "@hourly", "jobTemplate": {"spec": {"template": template}}}
    )
    if suspend is not None:
        spec["suspend"] = suspend
    return {"kind": kind, "metadata": {"name": "train"}, "spec": spec}


def scale(replicas: int) -> dict[str, Any]:
    spec = {"replicas": replicas} if replicas else {}  # omitempty: 0 is left out
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "infer"}, "spec": spec}  # fmt: skip


RESOURCES = {
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
}


def body(
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    *,
    namespace: str = "acme-prod",
    user: str = "alice",
    resource: str | None = None,
    sub: str = "",
) -> dict[str, Any]:
    kind = str((obj or old or {}).get("kind", "Pod"))
    group, version, plural = RESOURCES.get(resource or kind, RESOURCES["Pod"])
    name = str(((obj or old or {}).get("metadata") or {}).get("name", ""))
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "autoscaling" if kind == "Scale" else group,
                 "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": plural},
        "namespace": namespace,
        "name": name,
        "operation": operation,
        "userInfo": {"username": user, "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }  # fmt: skip
    if sub:
        request["subResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# -- fakes of the API ports -------------------------------------------------------------


class FakeSecrets:
    """One Secret with resourceVersions; `racer` runs before a write, as another replica."""

    where = "kubemeter/km-admission-cert"

    def __init__(self) -> None:
        self.data: dict[str, str] | None = None
        self.version = 0
        self.writes = 0
        self.racer: object = None

    def read(self) -> StoredSecret | None:
        if self.data is None:
            return None
        return StoredSecret(dict(self.data), str(self.version))

    def _race(self) -> None:
        racer, self.racer = self.racer, None
        if callable(racer):
            racer()

    def create(self, data: Mapping[str, str]) -> None:
        self._race()
        if self.data is not None:
            raise ConflictError("secret", "exists")
        self.data, self.version = dict(data), self.version + 1
        self.writes += 1

    def replace(self, data: Mapping[str, str], resource_version: str) -> None:
        self._race()
        if resource_version != str(self.version):
            raise ConflictError("secret", "changed")
        self.data, self.version = dict(data), self.version + 1
        self.writes += 1


class FakeConfigs:
    def __init__(self, bundles: dict[str, str] | None) -> None:
        self.bundles = bundles
        self.patches: list[dict[str, str]] = []

    def ca_bundles(self, name: str) -> dict[str, str] | None:
        return None if self.bundles is None else dict(self.bundles)

    def set_ca_bundles(self, name: str, bundles: Mapping[str, str]) -> None:
        assert self.bundles is not None
        self.patches.append(dict(bundles))
        self.bundles.update(bundles)


class FakeNamespaces:
    def __init__(self, labels: dict[str, str | None]) -> None:
        self.state = labels

    def labels(self, key: str) -> dict[str, str | None]:
        return dict(self.state)

    def set_label(self, namespace: str, key: str, value: str | None) -> bool:
        self.state[namespace] = value
        return True
