"""Which Tenant a pod's usage belongs to (pure: no kopf, no Kubernetes client).

Rules
-----
* A Tenant owns the namespaces it lists in ``spec.namespaces``; with ``spec.podSelector``
  it owns only the pods there whose labels match.
* A namespace listed by two or more Tenants is a configuration error. The *earliest* Tenant
  (``metadata.creationTimestamp``, then name) keeps the namespace; every later claimant gets
  a :class:`NamespaceConflict` (the handler layer turns it into a ``NamespaceConflict``
  condition and a Warning Event naming the namespace and the owner) and is billed nothing
  from that namespace.
* Overlapping usage stays with the owner when the owner's selector matches the pod, and goes
  to :data:`UNASSIGNED` otherwise. It never goes to a later claimant: the conflict must be
  fixed by the admin, and until then nothing is billed to a tenant whose claim is in doubt.
* A pod no Tenant owns (its namespace is not listed, the owner's selector excludes it, or the
  owner has a selector and the pod's labels are unknown) is billed to :data:`UNASSIGNED`,
  the reserved ledger tenant: usage is never dropped (``kubemeter unassigned`` lists it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubemeter_operator.api.tenant import LabelSelector, Tenant
from kubemeter_operator.usage.tenants import UNASSIGNED

__all__ = ["UNASSIGNED", "Assignment", "NamespaceConflict", "TenancyMap"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NamespaceConflict:
    """``tenant`` lists ``namespace``, which ``owner`` (created earlier) already owns."""

    tenant: str
    namespace: str
    owner: str

    @property
    def message(self) -> str:
        return (
            f"namespace {self.namespace!r} is already owned by tenant {self.owner!r} "
            f"(created earlier); usage there is not billed to {self.tenant!r}"
        )


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a pod's usage goes, and why (for logs and the unassigned report)."""

    tenant: str
    reason: str = ""
    """Empty when a Tenant owns the pod; otherwise why it is unassigned."""

    @property
    def unassigned(self) -> bool:
        return self.tenant == UNASSIGNED


@dataclass(frozen=True, slots=True)
class _Owner:
    tenant: str
    selector: LabelSelector | None


def _created(tenant: Tenant) -> datetime:
    raw: Any = tenant.metadata.get("creationTimestamp")
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if isinstance(raw, str) and raw:
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return _EPOCH
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _EPOCH


def _is_empty(selector: LabelSelector | None) -> bool:
    return selector is None or (not selector.match_labels and not selector.match_expressions)


@dataclass(frozen=True)
class TenancyMap:
    """Namespace ownership resolved from a set of Tenants. Build with :meth:`build`."""

    owners: Mapping[str, _Owner] = field(default_factory=dict)
    conflicts: tuple[NamespaceConflict, ...] = ()
    tenants: frozenset[str] = frozenset()

    @classmethod
    def build(cls, tenants: Iterable[Tenant]) -> TenancyMap:
        ordered = sorted(tenants, key=lambda t: (_created(t), t.name))
        owners: dict[str, _Owner] = {}
        conflicts: list[NamespaceConflict] = []
        for tenant in ordered:
            if tenant.name == UNASSIGNED or not tenant.name:
                continue
            selector = None if _is_empty(tenant.spec.pod_selector) else tenant.spec.pod_selector
            for namespace in tenant.spec.namespaces:
                owner = owners.get(namespace)
                if owner is None:
                    owners[namespace] = _Owner(tenant.name, selector)
                elif owner.tenant != tenant.name:
                    conflicts.append(NamespaceConflict(tenant.name, namespace, owner.tenant))
        return cls(owners, tuple(conflicts), frozenset(t.name for t in ordered))

    def conflicts_of(self, tenant: str) -> list[NamespaceConflict]:
        """The conflicts to report on ``tenant`` (empty when its claims are all clean)."""
        return [c for c in self.conflicts if c.tenant == tenant]

    def namespaces_of(self, tenant: str) -> list[str]:
        """The namespaces ``tenant`` actually owns (conflicting claims excluded)."""
        return sorted(ns for ns, o in self.owners.items() if o.tenant == tenant)

    def assign(self, namespace: str | None, labels: Mapping[str, str] | None) -> Assignment:
        """The tenant of a pod in ``namespace`` with ``labels`` (None: labels unknown)."""
        if not namespace:
            return Assignment(UNASSIGNED, "no pod (usage not attributed to any pod)")
        owner = self.owners.get(namespace)
        if owner is None:
            return Assignment(UNASSIGNED, f"no tenant owns namespace {namespace!r}")
        if owner.selector is None:
            return Assignment(owner.tenant)
        if labels is None:
            return Assignment(
                UNASSIGNED,
                f"tenant {owner.tenant!r} selects pods by label and the pod's labels are unknown",
            )
        if owner.selector.matches(dict(labels)):
            return Assignment(owner.tenant)
        return Assignment(
            UNASSIGNED, f"pod labels do not match the podSelector of tenant {owner.tenant!r}"
        )
