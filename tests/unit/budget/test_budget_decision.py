"""The budget decision (pure): thresholds once per period, triggers, restore only when what
caused a suspension changed, and no flapping at the limit (examples and properties)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemeter_operator.api.tenant import Budget, TenantPhase
from kubemeter_operator.budget.decision import (
    Action,
    BudgetInputs,
    Decision,
    Suspension,
    Trigger,
    WalletView,
    decide,
)
from kubemeter_operator.usage import Period

D = Decimal
NOV, DEC = Period.parse("2026-11"), Period.parse("2026-12")


def budget(limit: str = "100", enforcement: str = "scaleDown", **extra: Any) -> Budget:
    return Budget.model_validate({"limit": limit, "enforcement": enforcement, **extra})


def run(b: Budget | None, total: str, **kw: Any) -> Decision:
    return decide(BudgetInputs(b, kw.pop("period", NOV), D(total), **kw))


# -- thresholds --------------------------------------------------------------------------


def test_thresholds_are_compared_exactly_and_fire_once_per_period() -> None:
    b = budget("301.50", "alert", alertThresholds=[33, 80, 100])
    # 99.495 / 301.50 = 33 % exactly; 99.4949 is just below
    assert run(b, "99.4949").crossed == ()
    d = run(b, "99.495")
    assert (d.crossed, d.newly_crossed) == ((33,), (33,))
    d = run(b, "250", fired=frozenset({33}))
    assert (d.crossed, d.newly_crossed) == ((33, 80), (80,))
    assert run(b, "400", fired=frozenset({33, 80, 100})).newly_crossed == ()


def test_no_budget_crosses_nothing_and_never_suspends_without_a_wallet() -> None:
    d = run(None, "1000000")
    assert (d.phase, d.action, d.crossed) == (TenantPhase.ACTIVE, Action.NONE, ())


# -- triggers ------------------------------------------------------------------------------


def test_scale_down_at_the_limit_suspends_then_keeps() -> None:
    b = budget("100")
    assert run(b, "99.99").action is Action.NONE
    d = run(b, "100")
    assert (d.action, d.trigger, d.phase) == (Action.SUSPEND, Trigger.BUDGET_EXCEEDED,
                                              TenantPhase.SUSPENDED)  # fmt: skip
    assert "spent 100 of 100" in d.reason
    held = Suspension(NOV, Trigger.BUDGET_EXCEEDED, D(100))
    assert run(b, "120", suspension=held).action is Action.KEEP


@pytest.mark.parametrize("enforcement", ["alert", "none"])
def test_alert_and_none_never_suspend_and_show_warning_past_it(enforcement: str) -> None:
    b = budget("100", enforcement, **({"alertThresholds": [50]} if enforcement == "alert" else {}))
    d = run(b, "150")
    assert (d.action, d.phase) == (Action.NONE, TenantPhase.WARNING)


def test_forecast_suspends_before_the_limit_with_stop_before() -> None:
    b = budget("100")
    ten_min = timedelta(minutes=10)
    # 90 spent, 60/h: 10 more in 10 minutes reaches 100
    d = run(b, "90", burn_per_hour=D(60), stop_before=ten_min)
    assert (d.action, d.trigger) == (Action.SUSPEND, Trigger.BUDGET_FORECAST)
    assert "within 10m" in d.reason
    assert "60/h" in d.reason
    assert run(b, "89.99", burn_per_hour=D(60), stop_before=ten_min).action is Action.NONE
    assert run(b, "90", burn_per_hour=D(60)).action is Action.NONE  # no stopBefore


def test_an_empty_wallet_suspends_without_a_budget_or_with_scale_down_only() -> None:
    empty = WalletView(D(0), D("3.20"))
    d = run(None, "50", wallet=empty)
    assert (d.action, d.trigger) == (Action.SUSPEND, Trigger.WALLET_EMPTY)
    assert "empty" in d.reason
    assert "3.20 unpaid" in d.reason
    assert run(budget("1000"), "50", wallet=empty).trigger is Trigger.WALLET_EMPTY
    d = run(budget("1000", "alert", alertThresholds=[50]), "50", wallet=empty)
    assert (d.action, d.phase) == (Action.NONE, TenantPhase.WARNING)
    assert run(None, "50", wallet=WalletView(D("0.01"))).action is Action.NONE


# -- restore -----------------------------------------------------------------------------


def test_restore_on_a_new_period() -> None:
    held = Suspension(NOV, Trigger.BUDGET_EXCEEDED, D(100))
    d = run(budget("100"), "0", period=DEC, suspension=held)
    assert (d.action, d.phase) == (Action.RESTORE, TenantPhase.ACTIVE)
    assert "2026-12" in d.reason


def test_restore_when_the_limit_is_raised_or_enforcement_switched_off() -> None:
    held = Suspension(NOV, Trigger.BUDGET_EXCEEDED, D(100))
    assert run(budget("100"), "101", suspension=held).action is Action.KEEP
    d = run(budget("200"), "101", suspension=held)
    assert (d.action, d.reason) == (Action.RESTORE, "the limit was raised to 200")
    d = run(budget("100", "none"), "101", suspension=held)
    assert d.action is Action.RESTORE
    assert "enforcement is off" in d.reason


def test_a_forecast_suspension_is_not_lifted_because_the_burn_stopped() -> None:
    held = Suspension(NOV, Trigger.BUDGET_FORECAST, D(100))
    b, ahead = budget("100"), timedelta(minutes=10)
    # the workloads are stopped: the burn rate falls to 0, the forecast no longer reaches
    d = run(b, "91", burn_per_hour=D(0), stop_before=ahead, suspension=held)
    assert (d.action, d.trigger) == (Action.KEEP, Trigger.BUDGET_FORECAST)
    assert "raise the limit" in d.reason
    d = run(budget("150"), "91", burn_per_hour=D(0), stop_before=ahead, suspension=held)
    assert d.action is Action.RESTORE


def test_restore_after_a_top_up_that_covers_the_shortfall() -> None:
    held = Suspension(NOV, Trigger.WALLET_EMPTY)
    assert run(None, "50", wallet=WalletView(D(0), D(5)), suspension=held).action is Action.KEEP
    # topped up, but the settle has not paid the shortfall yet: still owing
    owing = WalletView(D(20), D(5))
    assert run(None, "50", wallet=owing, suspension=held).action is Action.KEEP
    d = run(None, "50", wallet=WalletView(D(15)), suspension=held)
    assert (d.action, d.reason) == (Action.RESTORE, "the wallet was topped up (balance 15)")


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="burn_per_hour"):
        BudgetInputs(None, NOV, D(0), burn_per_hour=D(-1))
    with pytest.raises(ValueError, match="stop_before"):
        BudgetInputs(None, NOV, D(0), stop_before=timedelta(seconds=-1))


# -- properties --------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False)
limits = st.decimals(min_value="0.01", max_value=10_000, places=2, allow_nan=False)
thresholds = st.lists(st.integers(1, 100), min_size=1, max_size=10, unique=True)
enforcements = st.sampled_from(["none", "alert", "scaleDown"])


@given(limit=limits, ts=thresholds, steps=st.lists(amounts, max_size=30))
def test_each_threshold_fires_once_per_period_as_the_total_grows(
    limit: Decimal, ts: list[int], steps: list[Decimal]
) -> None:
    b = budget(str(limit), "alert", alertThresholds=ts)
    fired: set[int] = set()
    total = D(0)
    for step in steps:
        total += step
        d = run(b, str(total), fired=frozenset(fired))
        assert not set(d.newly_crossed) & fired
        assert set(d.crossed) == fired | set(d.newly_crossed)
        fired |= set(d.newly_crossed)
    assert fired == {t for t in ts if total * 100 >= limit * t}


steps_below = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False)


@given(limit=st.decimals(min_value=100, max_value=2000, places=2), rate=amounts,
       steps=st.lists(steps_below, min_size=1, max_size=40),
       ahead=st.integers(0, 7200))  # fmt: skip
def test_no_flapping_within_a_period_while_the_total_grows(
    limit: Decimal, steps: list[Decimal], rate: Decimal, ahead: int
) -> None:
    """Applying each decision (suspend records a suspension, restore removes it), a tenant
    is suspended at most once per period and never restored in it without a change of its
    budget or wallet."""
    b = budget(str(limit))
    held: Suspension | None = None
    total, suspends = D(0), 0
    for i, step in enumerate(steps):
        total += step
        # the burn stops once suspended
        burn = D(0) if held is not None else rate
        d = run(b, str(total), burn_per_hour=burn, stop_before=timedelta(seconds=ahead),
                suspension=held)  # fmt: skip
        assert d.action is not Action.RESTORE, (i, d)
        if d.action is Action.SUSPEND:
            suspends += 1
            assert d.trigger is not None
            held = Suspension(NOV, d.trigger, limit)
        assert d.suspended == (held is not None)
        assert (d.phase is TenantPhase.SUSPENDED) == d.suspended
    assert suspends <= 1
    if total >= limit:
        assert held is not None  # at the limit, scaleDown always stops the burn


@given(limit=limits, total=amounts, enforcement=enforcements, balance=amounts,
       shortfall=amounts, wallet=st.booleans(), held=st.sampled_from([None, *Trigger]),
       new_period=st.booleans(), raised=st.booleans())  # fmt: skip
def test_restore_only_when_its_cause_changed_and_never_while_a_trigger_holds(
    limit: Decimal, total: Decimal, enforcement: str, balance: Decimal, shortfall: Decimal,
    wallet: bool, held: Trigger | None, new_period: bool, raised: bool,
) -> None:  # fmt: skip
    b = budget(str(limit + (1 if raised else 0)), enforcement)
    w = WalletView(balance, shortfall) if wallet else None
    suspension = Suspension(NOV, held, limit) if held is not None else None
    d = run(b, str(total), period=DEC if new_period else NOV, wallet=w, suspension=suspension)
    if d.action is Action.RESTORE:
        assert suspension is not None
        fresh = run(b, str(total), period=DEC if new_period else NOV, wallet=w)
        assert not fresh.suspended  # nothing would suspend it again at once
        changed = (new_period or enforcement != "scaleDown" or raised
                   or (held is Trigger.WALLET_EMPTY and w is not None and balance > 0)
                   or (held is Trigger.WALLET_EMPTY and w is None)
                   or (held is Trigger.BUDGET_EXCEEDED and total < limit))  # fmt: skip
        assert changed, d
    if suspension is None:
        assert d.action in (Action.NONE, Action.SUSPEND)
    else:
        assert d.action in (Action.KEEP, Action.RESTORE)
