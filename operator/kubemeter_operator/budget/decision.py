"""The budget decision: what a Tenant's budget and wallet call for now. Pure.

    decision = decide(BudgetInputs(budget, period, total, wallet=..., burn_per_hour=...,
                                   stop_before=..., fired=..., suspension=...))

Inputs are facts the operator reads each cycle: the budget (None: the Tenant has none), the
open period and its running total, the wallet (None: no prepaid wallet), the recent burn
rate, the thresholds already fired this period and the suspension the ledger recorded (the
one in force, if any). The decision says:

- ``crossed``: every alert threshold the total has reached, compared exactly (never on a
  rounded percent); ``newly_crossed``: those not fired yet in this period. Firing is
  recorded by the caller, so each fires once per period, whatever restarts in between.
- ``action``: ``suspend`` (stop the GPU workloads), ``keep`` (they stay stopped),
  ``restore`` (bring back what was recorded) or ``none``; ``trigger``: why they are or
  stay stopped.
- ``phase``: ``Suspended`` while stopped (``suspend``/``keep``), ``Warning`` from the
  warning threshold (:func:`~kubemeter_operator.budget.policy.warning_percent`) or with an
  empty wallet that does not enforce, else ``Active``.
- ``reason``: the decision in words, for the Tenant's status and Events.

Triggers, in this order (the first that holds is the one named):

1. ``walletEmpty``: the prepaid wallet has nothing left (balance <= 0). It enforces when the
   Tenant has no budget or its budget says ``scaleDown``.
2. ``budgetExceeded``: the period total reached the limit, with ``scaleDown``.
3. ``budgetForecast``: with ``stop_before`` (``budget.stopBefore``) and ``scaleDown``, the
   recent burn rate reaches the limit within ``stop_before``: spend stops at, not after, the
   limit (the overshoot is bounded by what one cycle burns).

Restore is allowed only when what caused the suspension has changed, never because the burn
rate fell (it falls *because* the workloads were stopped: restoring on it would flap):

- a new period (the recorded suspension's period is not the open one);
- enforcement switched off (``none`` or ``alert``);
- ``budgetExceeded``: the total is below the limit again (the limit was raised: a total
  never falls within a period);
- ``budgetForecast``: the limit was raised above the one recorded at suspension, and the
  forecast no longer reaches it;
- ``walletEmpty``: the wallet has money again and owes nothing (a top-up covered the
  shortfall).

and no trigger holds now. A suspension in force whose trigger no longer holds but whose
cause has not changed is kept. Within a period the total only grows, so a decision never
flaps at the limit: once ``budgetExceeded`` holds it holds until the limit is raised or the
period ends.

Imports no kopf, kubernetes or SQLAlchemy; enforcement and notifications act on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from kubemeter_operator.api.tenant import Budget, BudgetEnforcement, TenantPhase
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.budget.policy import warning_percent
from kubemeter_operator.usage import Period

_HOUR = Fraction(3600)


class Action(StrEnum):
    NONE = "none"
    SUSPEND = "suspend"
    KEEP = "keep"
    RESTORE = "restore"


class Trigger(StrEnum):
    WALLET_EMPTY = "walletEmpty"
    BUDGET_EXCEEDED = "budgetExceeded"
    BUDGET_FORECAST = "budgetForecast"


@dataclass(frozen=True, slots=True)
class WalletView:
    balance: Decimal
    """What is left to burn (the wallet's currency, the plan's)."""
    shortfall: Decimal = Decimal(0)
    """What the open periods are due and the wallet could not pay."""


@dataclass(frozen=True, slots=True)
class Suspension:
    """The suspension in force, as the ledger recorded it when the workloads were stopped."""

    period: Period
    trigger: Trigger
    limit: Decimal | None = None
    """The budget limit then (None: the Tenant had no budget)."""


@dataclass(frozen=True, slots=True)
class BudgetInputs:
    budget: Budget | None
    period: Period
    total: Decimal
    """The open period's running total (platform fee included, after discount)."""
    wallet: WalletView | None = None
    burn_per_hour: Decimal | None = None
    """Recent spend per hour (None: not known yet)."""
    stop_before: timedelta | None = None
    fired: frozenset[int] = frozenset()
    """Alert thresholds already fired in this period."""
    suspension: Suspension | None = None

    def __post_init__(self) -> None:
        if self.burn_per_hour is not None and self.burn_per_hour < 0:
            raise ValueError("burn_per_hour: must not be negative")
        if self.stop_before is not None and self.stop_before < timedelta(0):
            raise ValueError("stop_before: must not be negative")


@dataclass(frozen=True, slots=True)
class Decision:
    phase: TenantPhase
    action: Action
    trigger: Trigger | None
    """Why the workloads are (or stay) stopped; None when they are not."""
    crossed: tuple[int, ...]
    newly_crossed: tuple[int, ...]
    reason: str

    @property
    def suspended(self) -> bool:
        return self.action in (Action.SUSPEND, Action.KEEP)


def decide(inputs: BudgetInputs) -> Decision:
    """The decision for these inputs (see the module docstring)."""
    budget = inputs.budget
    crossed = _crossed(budget, inputs.total)
    newly = tuple(t for t in crossed if t not in inputs.fired)
    trigger = _trigger_now(inputs)
    held = inputs.suspension
    if trigger is not None:
        action = Action.KEEP if held is not None else Action.SUSPEND
        return Decision(TenantPhase.SUSPENDED, action, trigger, crossed, newly,
                        _why(trigger, inputs))  # fmt: skip
    if held is not None:
        lifted = _lifted(held, inputs)
        if lifted is None:
            return Decision(TenantPhase.SUSPENDED, Action.KEEP, held.trigger, crossed, newly,
                            _why_kept(held, inputs))  # fmt: skip
        return Decision(_phase_free(inputs), Action.RESTORE, None, crossed, newly, lifted)
    return Decision(_phase_free(inputs), Action.NONE, None, crossed, newly, _why_free(inputs))


def _crossed(budget: Budget | None, total: Decimal) -> tuple[int, ...]:
    if budget is None:
        return ()
    used = Fraction(total) * 100
    limit = Fraction(budget.limit)
    return tuple(sorted(t for t in budget.alert_thresholds if used >= limit * t))


def _scale_down(budget: Budget | None) -> bool:
    return budget is not None and budget.enforcement is BudgetEnforcement.SCALE_DOWN


def _wallet_enforces(budget: Budget | None) -> bool:
    return budget is None or budget.enforcement is BudgetEnforcement.SCALE_DOWN


def _forecast_reaches(inputs: BudgetInputs, limit: Decimal) -> bool:
    rate, ahead = inputs.burn_per_hour, inputs.stop_before
    if rate is None or ahead is None or rate == 0 or ahead == timedelta(0):
        return False
    burnt = Fraction(rate) * Fraction(ahead.total_seconds()) / _HOUR
    return Fraction(inputs.total) + burnt >= Fraction(limit)


def _trigger_now(inputs: BudgetInputs) -> Trigger | None:
    budget, wallet = inputs.budget, inputs.wallet
    if wallet is not None and wallet.balance <= 0 and _wallet_enforces(budget):
        return Trigger.WALLET_EMPTY
    if budget is None or not _scale_down(budget):
        return None
    if inputs.total >= budget.limit:
        return Trigger.BUDGET_EXCEEDED
    if _forecast_reaches(inputs, budget.limit):
        return Trigger.BUDGET_FORECAST
    return None


def _lifted(held: Suspension, inputs: BudgetInputs) -> str | None:
    """Why the suspension may end now (no trigger holds); None: it may not."""
    budget, wallet = inputs.budget, inputs.wallet
    if held.period != inputs.period:
        return f"a new period ({inputs.period}) began"
    if held.trigger is Trigger.WALLET_EMPTY:
        if not _wallet_enforces(budget):
            return "enforcement is off (budget.enforcement is not scaleDown)"
        if wallet is None:
            return "the Tenant has no prepaid wallet any more"
        if wallet.balance > 0 and wallet.shortfall <= 0:
            return f"the wallet was topped up (balance {format_decimal(wallet.balance)})"
        return None
    if not _scale_down(budget):
        return "enforcement is off (budget.enforcement is not scaleDown)"
    assert budget is not None  # _scale_down
    if held.trigger is Trigger.BUDGET_EXCEEDED:
        return f"the limit was raised to {format_decimal(budget.limit)}"  # total < limit now
    if held.limit is None or budget.limit > held.limit:
        return f"the limit was raised to {format_decimal(budget.limit)}"
    return None


def _spent(inputs: BudgetInputs) -> str:
    budget = inputs.budget
    if budget is None:
        return f"spent {format_decimal(inputs.total)}"
    return f"spent {format_decimal(inputs.total)} of {format_decimal(budget.limit)}"


def _why(trigger: Trigger, inputs: BudgetInputs) -> str:
    if trigger is Trigger.WALLET_EMPTY:
        wallet = inputs.wallet
        assert wallet is not None
        owed = f", {format_decimal(wallet.shortfall)} unpaid" if wallet.shortfall > 0 else ""
        return f"the prepaid wallet is empty (balance {format_decimal(wallet.balance)}{owed})"
    if trigger is Trigger.BUDGET_EXCEEDED:
        return f"the budget is spent in {inputs.period}: {_spent(inputs)}"
    ahead = inputs.stop_before or timedelta(0)
    return (
        f"the budget runs out within {_duration(ahead)} at the recent burn rate of "
        f"{format_decimal(inputs.burn_per_hour or Decimal(0))}/h: {_spent(inputs)}"
    )


def _why_kept(held: Suspension, inputs: BudgetInputs) -> str:
    if held.trigger is Trigger.BUDGET_FORECAST:
        return (
            f"suspended in {held.period} because the budget would run out within the "
            f"stopBefore window; raise the limit to restore ({_spent(inputs)})"
        )
    return f"suspended in {held.period} ({held.trigger}); the wallet still owes or is empty"


def _phase_free(inputs: BudgetInputs) -> TenantPhase:
    budget, wallet = inputs.budget, inputs.wallet
    if budget is not None:
        used = Fraction(inputs.total) * 100
        if used >= Fraction(budget.limit) * warning_percent(budget):
            return TenantPhase.WARNING
    if wallet is not None and wallet.balance <= 0:
        return TenantPhase.WARNING
    return TenantPhase.ACTIVE


def _why_free(inputs: BudgetInputs) -> str:
    if inputs.budget is None and inputs.wallet is None:
        return "no budget and no prepaid wallet"
    return f"within budget: {_spent(inputs)}"


def _duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
