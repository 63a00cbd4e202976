"""Which pod specs ask for a GPU. Pure (plain dicts as the API server returns them).

A pod spec requests a GPU when any of its containers (init containers included) names a GPU
resource in `resources.requests` or `resources.limits` with a quantity other than zero. GPU
resources are matched by pattern: the default `nvidia.com/gpu` and `nvidia.com/mig-*` (every
MIG profile), or the operator's configured list (`--gpu-resources`), where a trailing `*`
matches any suffix. Enforcement and admission both ask this module, so a workload the one
stops is one the other denies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-*")

_PATTERN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-a-z0-9._]*\*?$")
_ZERO_RE = re.compile(r"^0+(\.0*)?[a-zA-Z]*$")


@dataclass(frozen=True)
class GpuResources:
    """The resource names (patterns) that count as a GPU."""

    patterns: tuple[str, ...] = DEFAULT_GPU_RESOURCES

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("gpu_resources: at least one resource name is needed")
        for i, pattern in enumerate(self.patterns):
            if not _PATTERN_RE.match(pattern):
                raise ValueError(
                    f"gpu_resources[{i}]: {pattern!r} is not a resource name such as "
                    "nvidia.com/gpu (a trailing * matches any suffix)"
                )

    @classmethod
    def parse(cls, text: str) -> GpuResources:
        """From a comma-separated list (`nvidia.com/gpu,amd.com/gpu`)."""
        return cls(tuple(p.strip() for p in text.split(",") if p.strip()))

    def is_gpu(self, resource: str) -> bool:
        for pattern in self.patterns:
            if pattern.endswith("*"):
                if resource.startswith(pattern[:-1]):
                    return True
            elif resource == pattern:
                return True
        return False

    def requested(self, pod_spec: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The GPU resources a pod spec asks for (sorted; empty: none)."""
        found: set[str] = set()
        for container in _containers(pod_spec):
            resources = container.get("resources") or {}
            if not isinstance(resources, Mapping):
                continue
            for section in ("limits", "requests"):
                amounts = resources.get(section) or {}
                if not isinstance(amounts, Mapping):
                    continue
                for name, quantity in amounts.items():
                    if self.is_gpu(str(name)) and not _zero(quantity):
                        found.add(str(name))
        return tuple(sorted(found))

    def requests_gpu(self, pod_spec: Mapping[str, Any] | None) -> bool:
        return bool(self.requested(pod_spec))


def _containers(pod_spec: Mapping[str, Any] | None) -> Iterable[Mapping[str, Any]]:
    if not isinstance(pod_spec, Mapping):
        return ()
    out: list[Mapping[str, Any]] = []
    for key in ("initContainers", "containers"):
        items = pod_spec.get(key) or ()
        if isinstance(items, list):
            out.extend(c for c in items if isinstance(c, Mapping))
    return out


def _zero(quantity: Any) -> bool:
    return _ZERO_RE.match(str(quantity).strip()) is not None


def pod_template_spec(kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec a workload object runs: Deployment, StatefulSet, ReplicaSet and Job
    (`spec.template.spec`), CronJob (`spec.jobTemplate.spec.template.spec`), Pod (`spec`)."""
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        return None
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    inner = template.get("spec") if isinstance(template, Mapping) else None
    return inner if isinstance(inner, Mapping) else None


def pod_template_labels(kind: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """The labels of the pods a workload runs (a Pod's own labels)."""
    if kind == "Pod":
        labels = (obj.get("metadata") or {}).get("labels") or {}
    else:
        spec = obj.get("spec") or {}
        if kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
