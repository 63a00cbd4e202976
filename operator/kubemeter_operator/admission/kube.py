"""The webhook's Kubernetes API calls, on the official client, behind our errors.

- `KubeSecretStore`: the one certificate Secret (read, create, replace at a resourceVersion;
  409 is ConflictError).
- `KubeWebhookConfigs`: read and patch the caBundle of a ValidatingWebhookConfiguration.
- `KubeNamespaces`: list namespaces' tenant labels, set or remove one.
- `WorkloadReader`: read the Deployment or StatefulSet behind a Scale request.
- `whoami`: the operator's own username (authentication.k8s.io/v1 SelfSubjectReview,
  which every authenticated user may create: no RBAC needed).

Failures: TransientError (5xx, 429, connection) or PermanentError (403: RBAC, 422), as in
`kube.client`. Every call is blocking and bounded by `REQUEST_TIMEOUT_S`: call it off the
event loop. Never read or write other objects than these, and never log Secret data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubemeter_operator.admission.certs import SECRET_TYPE
from kubemeter_operator.admission.certstore import StoredSecret
from kubemeter_operator.errors import ConflictError
from kubemeter_operator.kube.client import _wrap

REQUEST_TIMEOUT_S = 10.0
LOOKUP_TIMEOUT_S = 3.0
"""Reading a workload during a review: the API server waits only `timeoutSeconds` for us."""

_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def _json(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data


def _status(exc: Exception) -> int:
    return int(exc.status or 0) if isinstance(exc, ApiException) else 0


class KubeSecretStore:
    """The certificate Secret `namespace/name`."""

    def __init__(self, api_client: Any, namespace: str, name: str) -> None:
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.namespace, self.name = namespace, name
        self.where = f"{namespace}/{name}"
        self._seen: dict[str, Any] = {}
        """Type, labels and annotations of the Secret as last read: a replace keeps them
        (the chart creates the Secret empty, type Opaque, with Helm's labels; the type of a
        Secret cannot change)."""

    def _body(self, data: Mapping[str, str], resource_version: str = "") -> Any:
        """A plain dict (the client serialises dicts as they are)."""
        seen = self._seen if resource_version else {}
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": seen.get("labels") or {"app.kubernetes.io/managed-by": "kubemeter"},
        }
        if seen.get("annotations"):
            meta["annotations"] = seen["annotations"]
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": seen.get("type") or SECRET_TYPE,
            "metadata": meta,
            "data": dict(data),
        }

    def read(self) -> StoredSecret | None:
        try:
            resp = self._core.read_namespaced_secret(
                self.name, self.namespace, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except _ERRORS as exc:
            if _status(exc) == 404:
                return None
            raise _wrap(f"read secret {self.where}", exc) from exc
        obj = _json(resp)
        meta = obj.get("metadata") or {}
        self._seen = {
            "type": obj.get("type"),
            "labels": meta.get("labels"),
            "annotations": meta.get("annotations"),
        }
        return StoredSecret(
            data={str(k): str(v) for k, v in (obj.get("data") or {}).items()},
            resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def create(self, data: Mapping[str, str]) -> None:
        try:
            self._core.create_namespaced_secret(
                self.namespace, self._body(data), _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except _ERRORS as exc:
            if _status(exc) == 409:
                raise ConflictError(f"secret {self.where}", "created by another replica") from exc
            raise _wrap(f"create secret {self.where}", exc) from exc

    def replace(self, data: Mapping[str, str], resource_version: str) -> None:
        try:
            self._core.replace_namespaced_secret(
                self.name, self.namespace, self._body(data, resource_version),
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except _ERRORS as exc:
            if _status(exc) == 409:
                raise ConflictError(f"secret {self.where}", "changed by another replica") from exc
            raise _wrap(f"replace secret {self.where}", exc) from exc


class KubeWebhookConfigs:
    def __init__(self, api_client: Any) -> None:
        self._api = kubernetes.client.AdmissionregistrationV1Api(api_client)

    def ca_bundles(self, name: str) -> dict[str, str] | None:
        try:
            resp = self._api.read_validating_webhook_configuration(
                name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
            )
        except _ERRORS as exc:
            if _status(exc) == 404:
                return None
            raise _wrap(f"read validatingwebhookconfiguration {name}", exc) from exc
        webhooks = _json(resp).get("webhooks") or []
        return {
            str(w.get("name")): str((w.get("clientConfig") or {}).get("caBundle") or "")
            for w in webhooks
            if isinstance(w, Mapping)
        }

    def set_ca_bundles(self, name: str, bundles: Mapping[str, str]) -> None:
        # Strategic merge: `webhooks` merges by name, so other fields stay as they are.
        patch = {
            "webhooks": [
                {"name": webhook, "clientConfig": {"caBundle": bundle}}
                for webhook, bundle in bundles.items()
            ]
        }
        try:
            self._api.patch_validating_webhook_configuration(
                name, patch, _content_type="application/strategic-merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except _ERRORS as exc:
            raise _wrap(f"patch validatingwebhookconfiguration {name}", exc) from exc


class KubeNamespaces:
    def __init__(self, api_client: Any) -> None:
        self._core = kubernetes.client.CoreV1Api(api_client)

    def labels(self, key: str) -> dict[str, str | None]:
        """Every namespace -> its value of label `key` (None: not set)."""
        out: dict[str, str | None] = {}
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_request_timeout": REQUEST_TIMEOUT_S}
            if cont:
                kwargs["_continue"] = cont
            try:
                resp = self._core.list_namespace(_preload_content=False, **kwargs)
            except _ERRORS as exc:
                raise _wrap("list namespaces", exc) from exc
            page = _json(resp)
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                out[str(meta.get("name"))] = (meta.get("labels") or {}).get(key)
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return out

    def set_label(self, namespace: str, key: str, value: str | None) -> bool:
        """Set (or, with None, remove) one label; False when the namespace is gone."""
        patch = {"metadata": {"labels": {key: value}}}
        try:
            self._core.patch_namespace(
                namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except _ERRORS as exc:
            if _status(exc) == 404:
                return False
            raise _wrap(f"label namespace {namespace}", exc) from exc
        return True


class WorkloadReader:
    def __init__(self, api_client: Any) -> None:
        self._apps = kubernetes.client.AppsV1Api(api_client)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment or StatefulSet, None when it does not exist."""
        read = {
            "Deployment": self._apps.read_namespaced_deployment,
            "StatefulSet": self._apps.read_namespaced_stateful_set,
        }[kind]
        try:
            resp = read(name, namespace, _preload_content=False, _request_timeout=LOOKUP_TIMEOUT_S)
        except _ERRORS as exc:
            if _status(exc) == 404:
                return None
            raise _wrap(f"read {kind} {namespace}/{name}", exc) from exc
        return _json(resp)


def whoami(api_client: Any) -> str:
    """The username the API server knows this client as."""
    api = kubernetes.client.AuthenticationV1Api(api_client)
    body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        resp = api.create_self_subject_review(
            body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
    except _ERRORS as exc:
        raise _wrap("create selfsubjectreview", exc) from exc
    user = ((_json(resp).get("status") or {}).get("userInfo") or {}).get("username")
    return str(user or "")
