"""status_patch writes only on change; status_events announces what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant, TenantStatus
from kubemeter_operator.rating import rate
from kubemeter_operator.status import build_status, merge_patch, status_events, status_patch
from kubemeter_operator.status.events import period_closed
from kubemeter_operator.usage import Period, Quantities, UsageKey

PERIOD = Period(2026, 11)
T0 = datetime(2026, 11, 16, tzinfo=UTC)
PLAN = PricePlanSpec.model_validate(
    {
        "currency": "EUR",
        "platformFee": "0",
        "meters": [
            {
                "name": "gpu",
                "kind": "gpuTime",
                "unit": "gpu-hour",
                "pricing": {"model": "flat", "unitPrice": "1.00"},
            }
        ],
    }
)


def tenant(budget: str | None = "100") -> Tenant:
    spec: dict[str, Any] = {"pricePlanRef": {"name": "p"}, "namespaces": ["acme"]}
    if budget is not None:
        spec["budget"] = {"limit": budget}
    return Tenant.model_validate({"metadata": {"name": "acme"}, "spec": spec})


def status_at(
    hours: int,
    *,
    now: datetime = T0,
    period: Period = PERIOD,
    previous: TenantStatus | None = None,
    plan: PricePlanSpec | None = PLAN,
    **kw: Any,
) -> TenantStatus:
    st = (
        rate(
            plan,
            {UsageKey("gpu", "A100"): Quantities(allocated_ms=hours * 3_600_000)},
            period=period,
        )
        if plan is not None
        else None
    )
    return build_status(tenant(), plan, st, now=now, period=period, previous=previous, **kw)


# -- status_patch ------------------------------------------------------------------------


def test_first_status_is_a_full_patch() -> None:
    new = status_at(10)
    patch = status_patch(None, new)
    assert patch == {"status": new.to_api()}


def test_no_patch_when_nothing_changed() -> None:
    first = status_at(10)
    again = status_at(10, previous=first)
    assert status_patch(first, again) is None


def test_lasttransitiontime_churn_alone_is_no_patch() -> None:
    first = status_at(10)
    churned = first.model_copy(deep=True)
    for c in churned.conditions:
        c.last_transition_time = T0 + timedelta(hours=1)
    assert status_patch(first, churned) is None


def test_patch_holds_only_what_changed() -> None:
    first = status_at(10)
    more = status_at(20, previous=first)
    patch = status_patch(first, more)
    assert patch is not None
    body = patch["status"]
    assert body["total"] == "20.00"
    assert body["summary"] == {"gpuHours": "20.00", "budgetUsed": "20.00%", "spend": "20.00 EUR"}
    assert "period" not in body
    assert "conditions" not in body
    assert set(body["budget"]) == {"used", "usedPercent", "remaining"}


def test_removed_fields_become_null() -> None:
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1}}) == {
        "a": None,
        "b": {"d": None},
    }
    assert merge_patch({"l": [1, 2]}, {"l": [1]}) == {"l": [1]}


# -- status_events -----------------------------------------------------------------------


def reasons(events: list[Any]) -> list[str]:
    return [e.reason for e in events]


def test_budget_thresholds_are_not_status_diff_events() -> None:
    # thresholds and the limit are announced once each through the ledger's outbox
    # (status.notices, controller.budgets), never from a status diff that a restart repeats
    s1 = status_at(40)
    s2 = status_at(85, previous=s1)
    s4 = status_at(100, previous=s2)
    assert status_events("acme", s1, s2) == []
    assert status_events("acme", s2, s4) == []


def test_metering_degraded_and_recovered() -> None:
    s1 = status_at(1)
    s2 = status_at(1, previous=s1, degraded={"prometheus": "timeout"})
    s3 = status_at(1, previous=s2, degraded={"prometheus": "still timing out"})
    s4 = status_at(1, previous=s3)
    assert reasons(status_events("acme", s1, s2)) == ["MeteringDegraded"]
    assert status_events("acme", s1, s2)[0].type == "Warning"
    assert status_events("acme", s2, s3) == []
    recovered = status_events("acme", s3, s4)
    assert reasons(recovered) == ["MeteringRecovered"]
    assert recovered[0].type == "Normal"


def test_period_rollover_does_not_claim_a_close() -> None:
    november = status_at(90)
    december = status_at(
        60, now=datetime(2026, 12, 1, 0, 5, tzinfo=UTC), period=PERIOD.next(), previous=november
    )
    # a new period in status says nothing about the old one being final: the ledger decides
    # that, and the controller posts PeriodClosed when it has stored the invoice
    events = status_events("acme", november, december)
    assert "PeriodClosed" not in reasons(events)


def test_period_closed_event_names_the_total_and_the_invoice_command() -> None:
    event = period_closed("acme", "2026-11", Decimal("90.01"), "EUR")
    assert event.reason == "PeriodClosed"
    assert "2026-11 is finalised with a total of 90.01 EUR" in event.message
    assert "kubemeter invoice acme --period 2026-11" in event.message


def test_missing_plan_and_found_again() -> None:
    ok = status_at(1)
    missing = status_at(1, previous=ok, plan=None)
    back = status_at(1, previous=missing)
    assert reasons(status_events("acme", ok, missing)) == ["PricePlanNotFound"]
    assert reasons(status_events("acme", missing, missing)) == []
    assert reasons(status_events("acme", missing, back)) == ["PricePlanFound"]
    assert reasons(status_events("acme", None, status_at(1, plan=None))) == ["PricePlanNotFound"]


def test_namespace_conflict_and_resolution() -> None:
    ok = status_at(1)
    clash = status_at(1, previous=ok, conflicts={"acme": "globex"})
    resolved = status_at(1, previous=clash)
    assert reasons(status_events("acme", ok, clash)) == ["NamespaceConflict"]
    assert reasons(status_events("acme", clash, resolved)) == ["NamespaceConflictResolved"]
