"""Autoscalers of stopped workloads: HPAs (recorded and explained) and KEDA ScaledObjects
(paused with their own annotation). Pure matching over plain dicts.

- An HPA whose `scaleTargetRef` is a stopped Deployment or StatefulSet sees 0 replicas as
  "scaling disabled" and leaves it at 0 (Kubernetes' own rule); it scales again once the
  workload is restored. kubemeter records it and says so in status.
- A KEDA ScaledObject would scale the target back up from 0 on its next trigger, so it is
  paused with `autoscaling.keda.sh/paused-replicas: "0"` (KEDA's own pause), and the
  annotation is removed on restore. One that was already paused before kubemeter came is
  left as it is (and not unpaused on restore).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubemeter_operator.kube.workloads import KEDA_PAUSED


def _target(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
    if not isinstance(ref, Mapping) or not ref.get("name"):
        return None
    return str(ref.get("kind") or "Deployment"), str(ref["name"])


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def targets(objects: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(kind, name) of the scale target -> the HPA or ScaledObject."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for obj in objects:
        target = _target(obj)
        if target is not None:
            out[target] = obj
    return out


def hpa_note(hpa: Mapping[str, Any]) -> str:
    return (
        f"HPA {_name(hpa)} sees 0 replicas as disabled and leaves it at 0; "
        "it scales again after the restore"
    )


def keda_paused_before(scaled_object: Mapping[str, Any]) -> bool:
    annotations = (scaled_object.get("metadata") or {}).get("annotations") or {}
    return KEDA_PAUSED in annotations


def keda_note(scaled_object: Mapping[str, Any]) -> str:
    return (
        f'KEDA ScaledObject {_name(scaled_object)} paused ({KEDA_PAUSED}: "0"); '
        "the annotation is removed on restore"
    )


def scaled_object_name(scaled_object: Mapping[str, Any]) -> str:
    return _name(scaled_object)
