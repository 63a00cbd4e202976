"""Tenant status: build it from a statement (pure), diff it, and say what changed.

status = build_status(tenant, plan, statement, now=now, period=period, ...)
patch = status_patch(tenant.status, status)        # None: nothing to write
for event in status_events(tenant.name, tenant.status, status): post(event)
"""

from kubemeter_operator.status.builder import build_status, summary, wallet_status
from kubemeter_operator.status.conditions import (
    CONDITION_TYPES,
    METERING_DEGRADED,
    NAMESPACE_CONFLICT,
    PRICE_PLAN_FOUND,
    READY,
)
from kubemeter_operator.status.diff import merge_patch, status_patch
from kubemeter_operator.status.events import StatusEvent, status_events
from kubemeter_operator.status.forecast import (
    MIN_SPAN,
    RECENT_WINDOW,
    TotalSample,
    burn_rate,
    forecast,
)

__all__ = [
    "CONDITION_TYPES",
    "METERING_DEGRADED",
    "MIN_SPAN",
    "NAMESPACE_CONFLICT",
    "PRICE_PLAN_FOUND",
    "READY",
    "RECENT_WINDOW",
    "StatusEvent",
    "TotalSample",
    "build_status",
    "burn_rate",
    "forecast",
    "merge_patch",
    "status_events",
    "status_patch",
    "summary",
    "wallet_status",
]
