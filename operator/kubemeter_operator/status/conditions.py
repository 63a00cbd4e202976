"""Tenant status conditions, with Kubernetes' lastTransitionTime discipline. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from kubemeter_operator.api.conditions import Condition

READY = "Ready"
PRICE_PLAN_FOUND = "PricePlanFound"
NAMESPACE_CONFLICT = "NamespaceConflict"
METERING_DEGRADED = "MeteringDegraded"
CURRENCY_MISMATCH = "CurrencyMismatch"
"""The plan (or the wallet) is in another currency than the open period's terms."""
PERIOD_CLOSE_BLOCKED = "PeriodCloseBlocked"
"""A period metering has covered cannot be finalised (no terms to price it)."""

UNTRUSTED_USAGE = "UntrustedUsage"
"""Series claiming this tenant's pods were ignored (not scraped from the exporter, or from
another node than they name): nothing of them is billed."""
API_TOKEN_VALID = "ApiTokenValid"
"""The events API token the Tenant names is usable (strong, readable, not shared)."""

ENFORCEMENT_BLOCKED = "EnforcementBlocked"
"""Budget enforcement could not make every change it must this cycle (retried each cycle)."""

CONDITION_TYPES = (
    READY,
    PRICE_PLAN_FOUND,
    NAMESPACE_CONFLICT,
    METERING_DEGRADED,
    CURRENCY_MISMATCH,
    PERIOD_CLOSE_BLOCKED,
    UNTRUSTED_USAGE,
    API_TOKEN_VALID,
    ENFORCEMENT_BLOCKED,
)

Status = Literal["True", "False", "Unknown"]


def condition(
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    now: datetime,
    previous: Sequence[Condition] | None,
    generation: int | None = None,
) -> Condition:
    """A condition whose lastTransitionTime is kept from `previous` unless status changed."""
    before = find(previous or (), type_)
    since = (
        before.last_transition_time
        if before is not None and before.status == status and before.last_transition_time
        else now
    )
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:2000],
        last_transition_time=since,
        observed_generation=generation,
    )


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def describe(items: Mapping[str, str]) -> str:
    """`a: why; b: why` in a stable order."""
    return "; ".join(f"{k}: {v}" for k, v in sorted(items.items()))
