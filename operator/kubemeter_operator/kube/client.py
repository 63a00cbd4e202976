"""A small, typed face on the `kubernetes` client for what the operator writes.

Library errors become ours: 5xx, 429 and connection failures are TransientError (retry),
other 4xx are PermanentError (surface them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubemeter_operator.api.priceplan import GROUP, VERSION
from kubemeter_operator.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

EVENT_NAMESPACE = "default"
"""Events about cluster-scoped objects (Tenants, PricePlans) live here; `kubectl describe`
finds them by involvedObject."""
COMPONENT = "kubemeter-operator"


def load_api_client(kubeconfig: str | None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig file (at `context`, default its current one), or
    from the in-cluster service account."""
    try:
        if kubeconfig or context:
            return kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, persist_config=False
            )
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return kubernetes.client.ApiClient()
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise PermanentError(f"cannot load Kubernetes credentials: {exc}") from exc


def list_tenants(api_client: Any) -> list[dict[str, Any]]:
    """The Tenants in the cluster right now (plain dicts, as the API server returns them)."""
    custom = kubernetes.client.CustomObjectsApi(api_client)
    try:
        tenants: Any = custom.list_cluster_custom_object(GROUP, VERSION, "tenants")
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _wrap("list tenants", exc) from exc
    return list(tenants["items"])


def _wrap(what: str, exc: Exception) -> Exception:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = f"{what}: HTTP {status} {exc.reason}: {(exc.body or '')[:300]}"
        if status >= 500 or status in (0, 429):
            return TransientError(detail)
        return PermanentError(detail)
    return TransientError(f"{what}: {exc}")


def list_world(api_client: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Tenants and PricePlans in the cluster right now."""
    custom = kubernetes.client.CustomObjectsApi(api_client)
    try:
        tenants: Any = custom.list_cluster_custom_object(GROUP, VERSION, "tenants")
        plans: Any = custom.list_cluster_custom_object(GROUP, VERSION, "priceplans")
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _wrap("list tenants and price plans", exc) from exc
    return list(tenants["items"]), list(plans["items"])


class KubeWriter:
    """Status patches and Events for kubemeter's cluster-scoped resources."""

    def __init__(self, api_client: Any) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch the status subresource of a kubemeter object."""
        await asyncio.to_thread(self._patch_status, plural, name, patch)

    def _patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        try:
            self._custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, patch)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _wrap(f"patch {plural}/{name} status", exc) from exc

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Record a core/v1 Event about `obj` (a Tenant or PricePlan body)."""
        await asyncio.to_thread(self._post_event, obj, reason, message, type_)

    def _post_event(self, obj: dict[str, Any], reason: str, message: str, type_: str) -> None:
        meta = obj.get("metadata", {})
        now = datetime.now(UTC)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'kubemeter')}.{secrets.token_hex(8)}",
                "namespace": EVENT_NAMESPACE,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", ""),
                "name": meta.get("name", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason[:128],
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self._core.create_namespaced_event(EVENT_NAMESPACE, body)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _wrap(f"post event {reason} on {meta.get('name')}", exc) from exc
