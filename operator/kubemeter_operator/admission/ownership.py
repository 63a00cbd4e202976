"""Which Tenant owns a namespace, and which Tenants are suspended, for admission. Pure.

A namespace belongs to the Tenant metering bills its pods to (`usage.tenancy.TenancyMap`:
the earliest-created Tenant that lists it; the later claimants get a NamespaceConflict), so
what admission denies is what enforcement stops and what metering bills. With
`spec.podSelector` a Tenant owns only the pods (and workloads whose pod template labels)
match it.

A Tenant is suspended for admission while `status.enforcement.state` is `Suspending` or
`Suspended`: enforcement writes that state before it stops the first workload and replaces
it with `Restoring` before it starts restoring them.

Never reads anything but the Tenants it is given (no clock, no API).
"""

from __future__ import annotations

from collections.abc import Mapping

from kubemeter_operator.api.tenant import EnforcementState, Tenant
from kubemeter_operator.usage.tenancy import TenancyMap

SUSPENDED_STATES = frozenset({EnforcementState.SUSPENDING, EnforcementState.SUSPENDED})


def namespace_owners(tenants: Mapping[str, Tenant]) -> dict[str, Tenant]:
    """namespace -> the Tenant that owns it (the one metering bills its pods to)."""
    tenancy = TenancyMap.build(tenants.values())
    return {ns: tenants[owner.tenant] for ns, owner in tenancy.owners.items()
            if owner.tenant in tenants}  # fmt: skip


def is_suspended(tenant: Tenant) -> bool:
    enforcement = tenant.status.enforcement if tenant.status is not None else None
    return enforcement is not None and enforcement.state in SUSPENDED_STATES


def selects(tenant: Tenant, labels: Mapping[str, str]) -> bool:
    """Whether the Tenant's pod selector (if any) takes pods with these labels."""
    selector = tenant.spec.pod_selector
    return selector is None or selector.matches(dict(labels))
