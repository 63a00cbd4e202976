"""Who changed a stopped workload back: the field manager in `managedFields`. Pure.

The API server records, per field manager, which fields it set last (`managedFields`,
`fieldsV1`). kubemeter writes `spec.replicas` (through `/scale`) and `spec.suspend` as
``kubemeter-operator``; when someone else sets them again, that field moves to their
manager (``kubectl``, ``kube-controller-manager`` for an HPA, ``argocd-controller``,
``keda-operator`` ...). The latest manager other than kubemeter that owns the field is the
one named in the `EnforcementFought` Event.

One gap is the API server's, not ours: after `spec.replicas` is set to 0 through `/scale`
(which is how kubemeter stops a Deployment: it may patch `/scale` only, never the pod
template), the API server drops the field's ownership, and later `/scale` writes (kubectl
scale, an HPA, KEDA) are recorded under no manager until someone writes the Deployment
itself (kubectl apply/edit/patch, Argo CD, Flux: those are named). Then the Event says it
was scaled through /scale and names the autoscalers that target the workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubemeter_operator.kube.workloads import FIELD_MANAGER


def _owns(fields: Any, path: tuple[str, ...]) -> bool:
    node = fields
    for part in path:
        if not isinstance(node, Mapping):
            return False
        node = node.get(f"f:{part}")
        if node is None:
            return False
    return True


UNRECORDED = (
    "a /scale write the API server records under no manager (kubectl scale, an HPA or KEDA)"
)


def changed_by(
    obj: Mapping[str, Any], field: tuple[str, ...], autoscaler: str | None = None
) -> str:
    """The field manager (and operation / subresource) that last set `field`, other than
    kubemeter; when managedFields do not say, `UNRECORDED` and the autoscalers known."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    best: tuple[str, str] | None = None
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        manager = str(entry.get("manager", ""))
        if manager == FIELD_MANAGER or not _owns(entry.get("fieldsV1"), field):
            continue
        at = str(entry.get("time", ""))
        sub = entry.get("subresource")
        name = f"{manager} ({entry.get('operation', 'Update')}"
        name += f" on /{sub})" if sub else ")"
        if best is None or at >= best[0]:
            best = (at, name)
    if best is not None:
        return best[1]
    return f"{UNRECORDED}; {autoscaler}" if autoscaler else UNRECORDED


def fought_field(kind: str) -> tuple[str, ...]:
    return ("spec", "replicas") if kind in ("Deployment", "StatefulSet") else ("spec", "suspend")
