"""The coordination.k8s.io/v1 Lease that elects the active operator replica: read, create
and replace it with optimistic concurrency, behind our errors.

`replace` sends the resourceVersion it read: if another replica changed the Lease since,
the API server refuses with 409 and this raises ConflictError (that replica won the race).
NotFound on `get` is None. Other failures: TransientError (5xx, 429, connection) or
PermanentError (403: RBAC, 422: a bad object).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubemeter_operator.errors import ConflictError
from kubemeter_operator.kube.client import _wrap


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease says (spec fields, plus the resourceVersion it was read at)."""

    holder: str | None
    duration_s: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str = ""


def _micro(t: datetime | None) -> str | None:
    """MicroTime as the API server wants it: RFC 3339 with microseconds, in UTC."""
    if t is None:
        return None
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class KubeLeaseStore:
    """One named Lease in one namespace (the RBAC allows exactly this one)."""

    def __init__(self, api_client: Any, namespace: str, name: str) -> None:
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name

    def _record(self, obj: Any) -> LeaseRecord:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        return LeaseRecord(
            holder=spec.get("holderIdentity"),
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=_parse(spec.get("acquireTime")),
            renew_time=_parse(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def _body(self, rec: LeaseRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rec.resource_version:
            meta["resourceVersion"] = rec.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": rec.holder,
                "leaseDurationSeconds": rec.duration_s,
                "acquireTime": _micro(rec.acquire_time),
                "renewTime": _micro(rec.renew_time),
                "leaseTransitions": rec.transitions,
            },
        }

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"lease {self.namespace}/{self.name}", what) from exc
            raise _wrap(f"{what} lease {self.namespace}/{self.name}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _wrap(f"{what} lease {self.namespace}/{self.name}", exc) from exc

    def get(self) -> LeaseRecord | None:
        try:
            resp = self._api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _wrap(f"read lease {self.namespace}/{self.name}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _wrap(f"read lease {self.namespace}/{self.name}", exc) from exc
        return self._record(_json(resp))

    def create(self, rec: LeaseRecord) -> LeaseRecord:
        resp = self._call(
            "create", self._api.create_namespaced_lease, self.namespace, self._body(rec)
        )
        return self._record(_json(resp))

    def replace(self, rec: LeaseRecord) -> LeaseRecord:
        resp = self._call(
            "replace",
            self._api.replace_namespaced_lease,
            self.name,
            self.namespace,
            self._body(rec),
        )
        return self._record(_json(resp))


def _json(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data
