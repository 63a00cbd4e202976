"""The Kubernetes calls budget enforcement makes, on the official client. Blocking.

What it may do is exactly what the chart's RBAC grants: list the workloads of a namespace,
patch the `/scale` subresource of Deployments and StatefulSets, patch `spec.suspend` of Jobs
and CronJobs, delete a bare pod (only when its Tenant opts in), list HPAs, and annotate KEDA
ScaledObjects when KEDA is present. Every write names the field manager
``kubemeter-operator``, so a later change by anyone else shows up in `managedFields` under
their name (`enforcement.fights`). Errors are ours (`kube.client._wrap`): 404 on a write is
`NotFoundError`, so a workload deleted meanwhile is skipped, not retried.
"""

from __future__ import annotations

from typing import Any, Protocol

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubemeter_operator.errors import PermanentError
from kubemeter_operator.kube.client import _wrap

FIELD_MANAGER = "kubemeter-operator"
KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
KEDA_PAUSED = "autoscaling.keda.sh/paused-replicas"
KINDS = ("Deployment", "StatefulSet", "Job", "CronJob", "Pod")
_TIMEOUT = 30


class NotFoundError(PermanentError):
    """The object is gone (HTTP 404)."""


class WorkloadApi(Protocol):
    """What enforcement needs from the API server (tests can pass a fake)."""

    def list_kind(self, kind: str, namespace: str) -> list[dict[str, Any]]: ...

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None: ...

    def set_suspend(self, kind: str, namespace: str, name: str, suspend: bool) -> None: ...

    def delete_pod(self, namespace: str, name: str, uid: str) -> None: ...

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]: ...

    def list_scaled_objects(self, namespace: str) -> list[dict[str, Any]] | None:
        """None when the KEDA CRDs are not installed."""
        ...

    def annotate_scaled_object(self, namespace: str, name: str, value: str | None) -> None:
        """Set (or, with None, remove) the paused-replicas annotation."""
        ...


def _plain(api_client: Any, obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    out: dict[str, Any] = api_client.sanitize_for_serialization(obj)
    return out


class KubeWorkloads:
    """`WorkloadApi` on the official client."""

    def __init__(self, api_client: Any) -> None:
        self._client = api_client
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._batch = kubernetes.client.BatchV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._autoscaling = kubernetes.client.AutoscalingV2Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise NotFoundError(f"{what}: not found") from exc
            raise _wrap(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _wrap(what, exc) from exc

    def list_kind(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        fn = {
            "Deployment": self._apps.list_namespaced_deployment,
            "StatefulSet": self._apps.list_namespaced_stateful_set,
            "Job": self._batch.list_namespaced_job,
            "CronJob": self._batch.list_namespaced_cron_job,
            "Pod": self._core.list_namespaced_pod,
        }[kind]
        result = self._call(f"list {kind}s in {namespace}", fn, namespace)
        items = _plain(self._client, result).get("items") or []
        for item in items:  # list items carry no kind
            item.setdefault("kind", kind)
        return list(items)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        fn = {
            "Deployment": self._apps.read_namespaced_deployment,
            "StatefulSet": self._apps.read_namespaced_stateful_set,
            "Job": self._batch.read_namespaced_job,
            "CronJob": self._batch.read_namespaced_cron_job,
            "Pod": self._core.read_namespaced_pod,
        }[kind]
        try:
            obj = _plain(self._client, self._call(f"get {kind} {namespace}/{name}", fn, name,
                                                  namespace))  # fmt: skip
        except NotFoundError:
            return None
        obj.setdefault("kind", kind)
        return obj

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        fn = (
            self._apps.patch_namespaced_deployment_scale
            if kind == "Deployment"
            else self._apps.patch_namespaced_stateful_set_scale
        )
        self._call(
            f"scale {kind} {namespace}/{name} to {replicas}", fn, name, namespace,
            {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER,
        )  # fmt: skip

    def set_suspend(self, kind: str, namespace: str, name: str, suspend: bool) -> None:
        fn = (
            self._batch.patch_namespaced_job
            if kind == "Job"
            else self._batch.patch_namespaced_cron_job
        )
        self._call(
            f"set suspend={suspend} on {kind} {namespace}/{name}", fn, name, namespace,
            {"spec": {"suspend": suspend}}, field_manager=FIELD_MANAGER,
        )  # fmt: skip

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = kubernetes.client.V1DeleteOptions(preconditions={"uid": uid})
        self._call(f"delete pod {namespace}/{name}", self._core.delete_namespaced_pod, name,
                   namespace, body=body)  # fmt: skip

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        result = self._call(
            f"list HPAs in {namespace}",
            self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
            namespace,
        )
        return list(_plain(self._client, result).get("items") or [])

    def list_scaled_objects(self, namespace: str) -> list[dict[str, Any]] | None:
        try:
            result = self._call(
                f"list ScaledObjects in {namespace}",
                self._custom.list_namespaced_custom_object,
                KEDA_GROUP, KEDA_VERSION, namespace, "scaledobjects",
            )  # fmt: skip
        except NotFoundError:  # the CRD is not installed
            return None
        return list(_plain(self._client, result).get("items") or [])

    def annotate_scaled_object(self, namespace: str, name: str, value: str | None) -> None:
        self._call(
            f"annotate ScaledObject {namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            KEDA_GROUP, KEDA_VERSION, namespace, "scaledobjects", name,
            {"metadata": {"annotations": {KEDA_PAUSED: value}}},
            field_manager=FIELD_MANAGER,
        )  # fmt: skip
