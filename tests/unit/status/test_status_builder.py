"""The Tenant status builder: money fields, budget, wallet, forecast, phase, conditions and
the printer-column summary, built from real rated statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import (
    EnforcementState,
    EnforcementStatus,
    SuspendedWorkload,
    Tenant,
    TenantPhase,
    TenantStatus,
)
from kubemeter_operator.budget.decision import BudgetInputs, decide
from kubemeter_operator.budget.policy import warning_percent
from kubemeter_operator.rating import rate
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.status import (
    CONDITION_TYPES,
    METERING_DEGRADED,
    NAMESPACE_CONFLICT,
    PRICE_PLAN_FOUND,
    READY,
    TotalSample,
    build_status,
    burn_rate,
)
from kubemeter_operator.status.conditions import find
from kubemeter_operator.usage import Period, Quantities, UsageKey

PERIOD = Period(2026, 11)  # 30 days
MID = datetime(2026, 11, 16, tzinfo=UTC)  # exactly half of November has elapsed
H100 = "NVIDIA H100 80GB HBM3"

PLAN = PricePlanSpec.model_validate(
    {
        "currency": "USD",
        "platformFee": "100.00",
        "meters": [
            {
                "name": "h100",
                "kind": "gpuTime",
                "unit": "gpu-hour",
                "gpuModel": H100,
                "pricing": {"model": "flat", "unitPrice": "2.00"},
                "unitCost": "1.00",
            },
            {
                "name": "prompt",
                "kind": "promptTokens",
                "unit": "1m-tokens",
                "pricing": {"model": "flat", "unitPrice": "1.00"},
            },
            {
                "name": "completion",
                "kind": "completionTokens",
                "unit": "1m-tokens",
                "pricing": {"model": "flat", "unitPrice": "3.00"},
            },
        ],
    }
)


def make_tenant(
    *, budget: dict[str, Any] | None = None, wallet: dict[str, Any] | None = None, **spec: Any
) -> Tenant:
    body: dict[str, Any] = {
        "pricePlanRef": {"name": "standard"},
        "namespaces": ["acme"],
        **spec,
    }
    if budget is not None:
        body["budget"] = budget
    if wallet is not None:
        body["wallet"] = wallet
    return Tenant.model_validate({"metadata": {"name": "acme", "generation": 3}, "spec": body})


def statement(gpu_hours: int = 100, prompt_m: int = 0, discount: str = "0") -> Statement:
    totals = {
        UsageKey("gpu", H100): Quantities(allocated_ms=gpu_hours * 3_600_000 + 1_234),
        UsageKey("tokens", "llama"): Quantities(
            prompt_tokens=prompt_m * 1_000_000, completion_tokens=500_000
        ),
    }
    return rate(PLAN, totals, period=PERIOD, discount_percent=Decimal(discount))


def test_money_fields_meters_and_summary() -> None:
    st = statement(gpu_hours=100, prompt_m=2)  # 100 + 200.00 + 2.00 + 1.50
    status = build_status(make_tenant(budget={"limit": "1000"}), PLAN, st, now=MID, period=PERIOD)
    assert status.period == "2026-11"
    assert status.period_start == PERIOD.start
    assert status.period_end == PERIOD.end
    assert status.currency == "USD"
    assert status.total == Decimal("303.50")
    assert (status.platform_fee, status.subtotal, status.discount) == (
        Decimal("100.00"),
        Decimal("303.50"),
        Decimal("0.00"),
    )
    assert status.cost == Decimal("100.00")
    assert status.margin == Decimal("203.50")
    h100 = status.meters[0]
    assert (h100.name, h100.quantity, h100.charge) == (
        "h100",
        Decimal(360_001_234),
        Decimal("200.00"),
    )
    assert status.summary is not None
    assert status.summary.gpu_hours == "100.00"
    assert status.summary.tokens == 2_500_000
    assert status.summary.spend == "303.50 USD"
    assert status.summary.budget_used == "30.35%"
    assert status.phase is TenantPhase.ACTIVE
    assert status.observed_generation == 3
    assert [c.type for c in status.conditions] == list(CONDITION_TYPES)
    assert {c.type: c.status for c in status.conditions} == {
        READY: "True",
        PRICE_PLAN_FOUND: "True",
        NAMESPACE_CONFLICT: "False",
        METERING_DEGRADED: "False",
        "CurrencyMismatch": "False",
        "PeriodCloseBlocked": "False",
        "UntrustedUsage": "False",
        "ApiTokenValid": "Unknown",  # the tenant names no token Secret
        "EnforcementBlocked": "False",
    }
    assert all(c.last_transition_time == MID for c in status.conditions)
    # round-trips through the API model (what the API server stores)
    assert TenantStatus.model_validate(status.to_api()) == status


def test_no_cost_no_margin_when_the_plan_has_no_unit_costs() -> None:
    plan = PLAN.model_copy(
        update={"meters": [m.model_copy(update={"unit_cost": None}) for m in PLAN.meters]}
    )
    st = rate(plan, {}, period=PERIOD)
    status = build_status(make_tenant(), plan, st, now=MID, period=PERIOD)
    assert status.cost is None
    assert status.margin is None


def test_no_plan() -> None:
    status = build_status(make_tenant(budget={"limit": "10"}), None, None, now=MID, period=PERIOD)
    plan_found = find(status.conditions, PRICE_PLAN_FOUND)
    ready = find(status.conditions, READY)
    assert plan_found is not None
    assert plan_found.status == "False"
    assert "standard" in plan_found.message
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "PricePlanNotFound")
    assert status.phase is TenantPhase.WARNING
    assert status.total is None
    assert status.budget is None
    assert status.forecast is None
    assert status.meters == []
    assert status.summary is not None
    assert (status.summary.spend, status.summary.budget_used, status.summary.gpu_hours) == (
        "",
        "",
        "0.00",
    )


def test_statement_unavailable_keeps_the_previous_money_fields_of_the_same_period() -> None:
    tenant = make_tenant()
    before = build_status(tenant, PLAN, statement(), now=MID, period=PERIOD)
    later = MID + timedelta(minutes=1)
    after = build_status(tenant, PLAN, None, now=later, period=PERIOD, previous=before)
    assert after.total == before.total
    assert after.meters == before.meters
    ready = find(after.conditions, READY)
    assert ready is not None
    assert ready.reason == "StatementUnavailable"
    # ... but not across a period boundary
    december = build_status(tenant, PLAN, None, now=later, period=PERIOD.next(), previous=before)
    assert december.total is None
    assert december.meters == []


def test_statement_of_another_period_is_refused() -> None:
    with pytest.raises(ValueError):
        build_status(make_tenant(), PLAN, statement(), now=MID, period=PERIOD.next())


def test_prepaid_wallet() -> None:
    tenant = make_tenant(wallet={"enabled": True, "lowBalanceThreshold": "50"})
    st = statement()
    ok = build_status(tenant, PLAN, st, now=MID, period=PERIOD, wallet_balance=Decimal("80"))
    assert ok.wallet is not None
    assert (ok.wallet.balance, ok.wallet.low) == (Decimal(80), False)
    assert ok.phase is TenantPhase.ACTIVE
    low = build_status(tenant, PLAN, st, now=MID, period=PERIOD, wallet_balance=Decimal("49.99"))
    assert low.wallet is not None
    assert low.wallet.low
    assert low.phase is TenantPhase.WARNING
    empty = build_status(tenant, PLAN, st, now=MID, period=PERIOD, wallet_balance=Decimal(0))
    assert empty.wallet is not None
    assert empty.wallet.low
    unknown = build_status(tenant, PLAN, st, now=MID, period=PERIOD, previous=low)
    assert unknown.wallet == low.wallet  # balance unknown this cycle: keep what we showed
    off = build_status(make_tenant(), PLAN, st, now=MID, period=PERIOD, wallet_balance=Decimal(5))
    assert off.wallet is None


def test_budget_overrun_has_negative_remaining() -> None:
    tenant = make_tenant(budget={"limit": "250"})
    status = build_status(tenant, PLAN, statement(gpu_hours=100), now=MID, period=PERIOD)
    assert status.budget is not None
    assert status.budget.used == Decimal("301.50")
    assert status.budget.remaining == Decimal("-51.50")
    assert status.budget.used_percent == Decimal("120.60")
    assert status.budget.thresholds_crossed == [50, 80, 100]
    assert status.phase is TenantPhase.WARNING  # enforcement alert: never Suspended
    assert status.to_api()["budget"]["remaining"] == "-51.50"


def test_used_percent_rounds_half_up_and_thresholds_compare_exactly() -> None:
    # 1/3 of the limit: 33.333..% -> 33.33; 2/3 -> 66.67; exactly 80 % crosses 80
    tenant = make_tenant(budget={"limit": "301.50", "alertThresholds": [33, 80]})
    st = statement(gpu_hours=100)
    assert st.total == Decimal("301.50")
    status = build_status(tenant, PLAN, st, now=MID, period=PERIOD)
    assert status.budget is not None
    assert status.budget.used_percent == Decimal("100.00")
    tenant = make_tenant(budget={"limit": "904.50", "alertThresholds": [33, 34]})
    status = build_status(tenant, PLAN, st, now=MID, period=PERIOD)
    assert status.budget is not None
    assert status.budget.used_percent == Decimal("33.33")
    assert status.budget.thresholds_crossed == [33]
    tenant = make_tenant(budget={"limit": "376.875", "alertThresholds": [80]})
    status = build_status(tenant, PLAN, st, now=MID, period=PERIOD)
    assert status.budget is not None
    assert status.budget.thresholds_crossed == [80]
    assert status.budget.used_percent == Decimal("80.00")


@pytest.mark.parametrize(
    ("thresholds", "warn_at"),
    [([50, 80, 100], 80), ([90, 100], 90), ([50], 50), ([100], 100), ([], 80), ([50, 95], 95)],
)
def test_warning_threshold(thresholds: list[int], warn_at: int) -> None:
    tenant = make_tenant(
        budget={"limit": "100", "alertThresholds": thresholds, "enforcement": "none"}
    )
    assert tenant.spec.budget is not None
    assert warning_percent(tenant.spec.budget) == warn_at


@pytest.mark.parametrize(
    ("limit", "enforcement", "phase"),
    [
        ("1000", "alert", TenantPhase.ACTIVE),  # 30 %
        ("350", "alert", TenantPhase.WARNING),  # 86 %
        ("301.50", "alert", TenantPhase.WARNING),  # 100 %, alert only
        ("301.50", "scaleDown", TenantPhase.SUSPENDED),  # 100 %, scale down
        ("301.51", "scaleDown", TenantPhase.WARNING),  # just under
    ],
)
def test_phase(limit: str, enforcement: str, phase: TenantPhase) -> None:
    tenant = make_tenant(budget={"limit": limit, "enforcement": enforcement})
    status = build_status(tenant, PLAN, statement(gpu_hours=100), now=MID, period=PERIOD)
    assert status.phase is phase


def test_suspended_workloads_and_enforcement_are_kept_and_keep_the_phase_suspended() -> None:
    tenant = make_tenant()
    workload = SuspendedWorkload(kind="Deployment", namespace="acme", name="vllm", replicas=2)
    held = EnforcementStatus(
        state=EnforcementState.SUSPENDED, trigger="budgetExceeded", reason="spent",
        period="2026-11", started_at=MID,
    )  # fmt: skip
    suspended = decide(BudgetInputs(None, PERIOD, Decimal(0)))  # no budget: never suspends
    first = build_status(
        tenant, PLAN, statement(), now=MID, period=PERIOD, suspended_workloads=[workload],
        enforcement=held,
    )  # fmt: skip
    # not decided this cycle (no decision passed): a suspension in force stays Suspended
    assert first.phase is TenantPhase.SUSPENDED
    again = build_status(tenant, PLAN, statement(), now=MID, period=PERIOD, previous=first)
    assert again.suspended_workloads == [workload]
    assert again.enforcement == held
    assert again.phase is TenantPhase.SUSPENDED
    # decided: the decision sets the phase
    restored = build_status(
        tenant, PLAN, statement(), now=MID, period=PERIOD, previous=first, suspended_workloads=[],
        decision=suspended,
        enforcement=held.model_copy(update={"state": EnforcementState.RESTORED}),
    )  # fmt: skip
    assert restored.phase is TenantPhase.ACTIVE
    assert restored.suspended_workloads == []


# -- forecast ----------------------------------------------------------------------------


def test_forecast_without_budget_extrapolates_the_period_to_date() -> None:
    st = statement(gpu_hours=100)  # 100.00 fee + 200.00 + 1.50
    status = build_status(make_tenant(), PLAN, st, now=MID, period=PERIOD)
    assert status.forecast is not None
    # half the period elapsed: the variable part doubles, the fee does not
    assert status.forecast.projected_total == Decimal("503.00")
    assert status.forecast.budget_exhausted_at is None


def test_forecast_discount_applies_to_the_fixed_part_too() -> None:
    st = statement(gpu_hours=100, discount="10")  # subtotal 301.50, total 271.35
    assert st.total == Decimal("271.35")
    status = build_status(make_tenant(discountPercent="10"), PLAN, st, now=MID, period=PERIOD)
    assert status.forecast is not None
    # fixed 90.00, variable 181.35 -> 90.00 + 2 × 181.35
    assert status.forecast.projected_total == Decimal("452.70")


def test_forecast_with_budget_gives_the_exhaustion_instant() -> None:
    # variable 201.50 over 15 days; budget 400 leaves 98.50 -> 98.50/201.50 × 15 days later
    tenant = make_tenant(budget={"limit": "400"})
    status = build_status(tenant, PLAN, statement(gpu_hours=100), now=MID, period=PERIOD)
    assert status.forecast is not None
    expected = MID + timedelta(days=15) * (98.50 / 201.50)
    at = status.forecast.budget_exhausted_at
    assert at is not None
    assert at == expected.replace(second=0, microsecond=0)


def test_forecast_budget_not_exhausted_this_period() -> None:
    tenant = make_tenant(budget={"limit": "600"})
    status = build_status(tenant, PLAN, statement(gpu_hours=100), now=MID, period=PERIOD)
    assert status.forecast is not None
    assert status.forecast.projected_total == Decimal("503.00")
    assert status.forecast.budget_exhausted_at is None


def test_forecast_uses_the_recent_burn_rate_when_samples_exist() -> None:
    st = statement(gpu_hours=100)  # total 301.50 now
    samples = [
        TotalSample(MID - timedelta(hours=3), Decimal("100.00")),  # too old: ignored
        TotalSample(MID - timedelta(hours=1), Decimal("300.50")),  # 1.00 per hour since
        TotalSample(MID - timedelta(minutes=2), Decimal("301.40")),  # too recent to anchor
    ]
    tenant = make_tenant(budget={"limit": "310.50"})
    status = build_status(tenant, PLAN, st, now=MID, period=PERIOD, recent_totals=samples)
    assert status.forecast is not None
    # 15 days × 24 h × 1.00 more
    assert status.forecast.projected_total == Decimal("661.50")
    assert status.forecast.budget_exhausted_at == MID + timedelta(hours=9)


def test_idle_tenant_with_recent_samples_projects_its_current_total() -> None:
    st = statement(gpu_hours=100)
    samples = [TotalSample(MID - timedelta(minutes=30), st.total)]
    status = build_status(make_tenant(), PLAN, st, now=MID, period=PERIOD, recent_totals=samples)
    assert status.forecast is not None
    assert status.forecast.projected_total == st.total


def test_forecast_when_the_budget_is_already_used_up_keeps_its_instant() -> None:
    tenant = make_tenant(budget={"limit": "300"})
    first = build_status(tenant, PLAN, statement(gpu_hours=100), now=MID, period=PERIOD)
    assert first.forecast is not None
    assert first.forecast.budget_exhausted_at == MID
    later = build_status(
        tenant,
        PLAN,
        statement(gpu_hours=100),
        now=MID + timedelta(hours=2),
        period=PERIOD,
        previous=first,
    )
    assert later.forecast is not None
    assert later.forecast.budget_exhausted_at == MID


def test_burn_rate_at_the_period_start_is_zero() -> None:
    rate_ = burn_rate(now=PERIOD.start, period=PERIOD, total=Decimal(100), fixed=Decimal(100))
    assert rate_ == 0


# -- conditions --------------------------------------------------------------------------


def test_condition_transition_times() -> None:
    tenant = make_tenant()
    t0, t1, t2 = MID, MID + timedelta(minutes=1), MID + timedelta(minutes=2)
    s0 = build_status(tenant, PLAN, statement(), now=t0, period=PERIOD)
    s1 = build_status(
        tenant,
        PLAN,
        statement(),
        now=t1,
        period=PERIOD,
        previous=s0,
        degraded={"prometheus": "connection refused"},
    )
    degraded = find(s1.conditions, METERING_DEGRADED)
    ready = find(s1.conditions, READY)
    assert degraded is not None
    assert (degraded.status, degraded.last_transition_time) == ("True", t1)
    assert "prometheus: connection refused" in degraded.message
    assert ready is not None
    assert ready.last_transition_time == t0
    s2 = build_status(
        tenant,
        PLAN,
        statement(),
        now=t2,
        period=PERIOD,
        previous=s1,
        degraded={"prometheus": "timeout"},
    )
    degraded = find(s2.conditions, METERING_DEGRADED)
    assert degraded is not None
    assert degraded.last_transition_time == t1
    assert "timeout" in degraded.message


def test_namespace_conflict_condition() -> None:
    status = build_status(
        make_tenant(),
        PLAN,
        statement(),
        now=MID,
        period=PERIOD,
        conflicts={"shared": "globex"},
    )
    conflict = find(status.conditions, NAMESPACE_CONFLICT)
    assert conflict is not None
    assert conflict.status == "True"
    assert "shared: globex" in conflict.message
    assert conflict.observed_generation == 3


def test_previous_defaults_to_the_tenants_status() -> None:
    tenant = make_tenant()
    first = build_status(tenant, PLAN, statement(), now=MID, period=PERIOD)
    tenant.status = first
    later = build_status(tenant, PLAN, statement(), now=MID + timedelta(hours=1), period=PERIOD)
    assert [c.last_transition_time for c in later.conditions] == [MID] * len(CONDITION_TYPES)


def test_last_metered_time() -> None:
    tenant = make_tenant()
    first = build_status(tenant, PLAN, statement(), now=MID, period=PERIOD, last_metered_time=MID)
    assert first.last_metered_time == MID
    kept = build_status(tenant, PLAN, statement(), now=MID, period=PERIOD, previous=first)
    assert kept.last_metered_time == MID
