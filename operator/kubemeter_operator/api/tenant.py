"""The Tenant custom resource: who pays, under which plan, for which namespaces."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from kubemeter_operator.api.conditions import Condition
from kubemeter_operator.api.priceplan import BillingUnit, MeterKind
from kubemeter_operator.api.types import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Dec,
    Percent,
    SignedDec,
)


class PricePlanRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the (cluster-scoped) PricePlan."""


class LabelSelectorRequirement(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 "
                    ": size(self.values) == 0",
                    "message": "values must be non-empty for In and NotIn, "
                    "and empty for Exists and DoesNotExist",
                    "fieldPath": ".values",
                }
            ]
        }
    }

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError(
                "values: must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"
            )
        return self


class LabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


class BudgetEnforcement(StrEnum):
    NONE = "none"
    ALERT = "alert"
    SCALE_DOWN = "scaleDown"


DURATION_PATTERN = r"^[1-9][0-9]{0,5}(s|m|h)$"
"""A positive duration in whole seconds, minutes or hours (`90s`, `10m`, `2h`)."""

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> timedelta:
    """`10m` -> 10 minutes (the DURATION_PATTERN forms only)."""
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 2h")
    return timedelta(seconds=int(text[:-1]) * _DURATION_UNITS[text[-1]])


class BareGpuPods(StrEnum):
    EVENT = "event"
    """Leave GPU pods without a controller running, with an Event (the default)."""
    DELETE = "delete"
    """Delete them (they cannot be restored: nothing owns them)."""


class Budget(ApiModel):
    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "double(self.limit) > 0.0",
                    "message": "limit must be greater than 0",
                    "fieldPath": ".limit",
                },
                {
                    "rule": "self.enforcement != 'alert' || !has(self.alertThresholds) || "
                    "size(self.alertThresholds) > 0",
                    "message": "enforcement 'alert' needs at least one alert threshold",
                    "fieldPath": ".alertThresholds",
                },
            ]
        }
    }

    limit: Dec
    """Money limit per period, in the plan's currency, compared with the running total."""
    alert_thresholds: list[int] = Field(
        default_factory=lambda: [50, 80, 100],
        max_length=10,
        json_schema_extra={
            "items": {"type": "integer", "minimum": 1, "maximum": 100},
            "x-kubernetes-list-type": "set",
        },
    )
    """Percentages of the limit at which an Event (and webhook) fires."""
    enforcement: BudgetEnforcement = BudgetEnforcement.ALERT
    """none, alert, or scaleDown (scale GPU workloads to zero at 100 %)."""
    stop_before: str | None = Field(default=None, max_length=8, pattern=DURATION_PATTERN)
    """With scaleDown: suspend when the recent burn rate would spend the rest of the budget
    within this time (`10m`), so spend stops at, not after, the limit."""
    bare_gpu_pods: BareGpuPods = BareGpuPods.EVENT
    """GPU pods that no controller owns: left running with an Event, or deleted."""

    @property
    def stop_before_delta(self) -> timedelta | None:
        return parse_duration(self.stop_before) if self.stop_before else None

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.limit <= 0:
            raise ValueError("budget.limit: must be greater than 0")
        for i, t in enumerate(self.alert_thresholds):
            if not 1 <= t <= 100:
                raise ValueError(f"alertThresholds[{i}]: {t} is not within 1..100")
        if len(set(self.alert_thresholds)) != len(self.alert_thresholds):
            raise ValueError("alertThresholds: duplicate threshold")
        if self.enforcement is BudgetEnforcement.ALERT and not self.alert_thresholds:
            raise ValueError("alertThresholds: enforcement 'alert' needs at least one threshold")
        if self.stop_before is not None:
            try:
                parse_duration(self.stop_before)
            except ValueError as exc:
                raise ValueError(f"budget.stopBefore: {exc}") from exc
        return self


class Wallet(ApiModel):
    enabled: bool = False
    """Prepaid: rated charges burn the balance; an empty wallet acts as a hard cap."""
    low_balance_threshold: Dec = Decimal(0)
    """Warn when the balance falls below this amount."""


class SecretKeyRef(ApiModel):
    namespace: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field(default="token", min_length=1, max_length=253)


class Notification(ApiModel):
    webhook_url: str = Field(max_length=2048, pattern=r"^https?://[^\s]+$")
    """POSTed a JSON body for every threshold and enforcement action."""
    secret_ref: SecretKeyRef | None = None
    """Optional HMAC-SHA256 signing secret for the webhook body."""


class TenantSpec(ApiModel):
    display_name: str | None = Field(default=None, max_length=200)
    price_plan_ref: PricePlanRef
    namespaces: list[str] = Field(
        min_length=1,
        max_length=256,
        json_schema_extra={
            "items": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN},
            "x-kubernetes-list-type": "set",
        },
    )
    """Namespaces this tenant owns; its pods there are metered to it."""
    pod_selector: LabelSelector | None = None
    """Optionally narrow the owned pods by label."""
    discount_percent: Percent = Decimal(0)
    """Discount on the subtotal (platform fee + meter charges), 0 to 100."""
    budget: Budget | None = None
    wallet: Wallet | None = None
    notification: Notification | None = None
    api_token_secret_ref: SecretKeyRef | None = None
    """Secret holding the bearer token this tenant uses on the events API."""

    @model_validator(mode="after")
    def _check(self) -> TenantSpec:
        seen: set[str] = set()
        for i, ns in enumerate(self.namespaces):
            if not re.match(DNS_LABEL_PATTERN, ns) or len(ns) > 63:
                raise ValueError(f"namespaces[{i}]: {ns!r} is not a valid namespace name")
            if ns in seen:
                raise ValueError(f"namespaces[{i}]: duplicate namespace {ns!r}")
            seen.add(ns)
        return self


class TenantPhase(StrEnum):
    ACTIVE = "Active"
    WARNING = "Warning"
    SUSPENDED = "Suspended"


class MeterUsage(ApiModel):
    name: str = Field(max_length=63)
    kind: MeterKind
    unit: BillingUnit
    quantity: Dec
    """Usage in base units (GPU milliseconds, tokens, steps, requests, custom units)."""
    billed_quantity: Dec
    """Usage in the meter's billing unit."""
    included: Dec
    billable: Dec
    charge: Dec


class BudgetStatus(ApiModel):
    limit: Dec
    used: Dec
    used_percent: Dec
    remaining: SignedDec
    thresholds_crossed: list[int] = Field(default_factory=list, max_length=10)


class WalletStatus(ApiModel):
    balance: Dec
    low: bool = False
    shortfall: Dec = Decimal(0)
    """Charges the balance could not cover (outstanding until a top-up pays them)."""


class Forecast(ApiModel):
    projected_total: Dec
    """Projected period total at the recent burn rate."""
    budget_exhausted_at: AwareDatetime | None = None
    """When the budget runs out at that rate (absent when it will not this period)."""


WorkloadKind = Literal["Deployment", "StatefulSet", "Job", "CronJob", "Pod"]


class WorkloadState(StrEnum):
    STOPPING = "Stopping"
    """Recorded in the ledger (write-ahead); the change is being made."""
    STOPPED = "Stopped"
    """Scaled to 0 or suspended."""
    LEFT_RUNNING = "LeftRunning"
    """A bare GPU pod (no controller): left running, with an Event."""
    DELETED = "Deleted"
    """A bare GPU pod deleted (budget.bareGpuPods: delete)."""


class SuspendedWorkload(ApiModel):
    kind: WorkloadKind
    namespace: str = Field(max_length=63)
    name: str = Field(max_length=253)
    replicas: int | None = Field(default=None, ge=0)
    """Replicas before the scale-down (Deployments and StatefulSets): restored exactly."""
    suspend: bool | None = None
    """`spec.suspend` before (Jobs and CronJobs): restored exactly."""
    state: WorkloadState = WorkloadState.STOPPED
    autoscaler: str | None = Field(default=None, max_length=300)
    """What else scales it, and what kubemeter did about that (HPA, KEDA)."""
    suspended_at: AwareDatetime | None = None


class EnforcementState(StrEnum):
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RESTORING = "Restoring"
    RESTORED = "Restored"


class EnforcementStatus(ApiModel):
    """The latest enforcement of the Tenant's budget (kept after restore, until the next)."""

    state: EnforcementState
    trigger: str = Field(max_length=40)
    """walletEmpty, budgetExceeded or budgetForecast."""
    reason: str = Field(max_length=1000)
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    started_at: AwareDatetime
    stopped_at: AwareDatetime | None = None
    """When the last GPU workload reached 0."""
    limit: Dec | None = None
    overshoot: Dec | None = None
    """Spend above the limit when the last GPU workload reached 0 (0: stopped in time)."""
    restored_at: AwareDatetime | None = None
    skipped: list[str] = Field(default_factory=list, max_length=100)
    """Workloads deleted (or replaced) while suspended, not restored."""


class DeliveryState(StrEnum):
    DELIVERED = "Delivered"
    RETRYING = "Retrying"
    DEAD_LETTER = "DeadLetter"


class NotificationStatus(ApiModel):
    """The last webhook delivery (spec.notification)."""

    event_id: str = Field(max_length=64)
    type: str = Field(max_length=100)
    state: DeliveryState
    attempts: int = Field(ge=0)
    at: AwareDatetime
    error: str | None = Field(default=None, max_length=500)
    dead_letters: int = Field(default=0, ge=0)
    """Deliveries of this tenant that gave up (kept in the ledger's outbox)."""


class PeriodState(StrEnum):
    CLOSING = "Closing"
    """The period has ended; its invoice is finalised once metering has covered its end
    plus the grace for late events."""
    FINAL = "Final"


class PeriodSummary(ApiModel):
    """The previous period, while it closes and once it is final."""

    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    state: PeriodState
    currency: str = Field(max_length=3)
    total: SignedDec
    """The running total while closing; the invoice total once final."""


class TenantSummary(ApiModel):
    """Pre-formatted figures for `kubectl get tenants`."""

    gpu_hours: str = Field(max_length=40)
    tokens: int = Field(ge=0)
    spend: str = Field(max_length=60)
    budget_used: str = Field(default="", max_length=20)


class TenantStatus(ApiModel):
    period: str | None = Field(default=None, pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    period_start: AwareDatetime | None = None
    period_end: AwareDatetime | None = None
    currency: str | None = Field(default=None, max_length=3)
    meters: list[MeterUsage] = Field(default_factory=list, max_length=64)
    platform_fee: Dec | None = None
    subtotal: Dec | None = None
    discount: Dec | None = None
    adjustments: SignedDec | None = None
    """Late usage of earlier, finalised periods billed this period (see the statement)."""
    total: SignedDec | None = None
    cost: Dec | None = None
    margin: SignedDec | None = None
    previous_period: PeriodSummary | None = None
    budget: BudgetStatus | None = None
    wallet: WalletStatus | None = None
    forecast: Forecast | None = None
    phase: TenantPhase | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=20)
    suspended_workloads: list[SuspendedWorkload] = Field(default_factory=list, max_length=1000)
    enforcement: EnforcementStatus | None = None
    notification: NotificationStatus | None = None
    last_metered_time: AwareDatetime | None = None
    observed_generation: int | None = None
    summary: TenantSummary | None = None


class Tenant(ApiModel):
    """A Tenant object as stored in the API server."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["kubemeter.dev/v1alpha1"] = "kubemeter.dev/v1alpha1"
    kind: Literal["Tenant"] = "Tenant"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TenantSpec
    status: TenantStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
