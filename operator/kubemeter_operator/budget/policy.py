"""Budget policy: what a period total means against a Tenant's budget. Pure.

- `budget_status`: used (the running period total, platform fee included, after discount),
  percent used (2 places, half-up), remaining, and the alert thresholds reached (compared
  exactly, never on the rounded percent).
- `budget_phase`: `Suspended` when the limit is reached and enforcement is `scaleDown`;
  `Warning` from `warning_percent`; None when the budget alone says nothing.
- `warning_percent`: the lowest configured threshold of 80 % or more; with none in 80..100,
  the highest configured one; 80 % when no thresholds are configured.

Imports no kopf, kubernetes or SQLAlchemy; enforcement acts on these decisions elsewhere.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.tenant import Budget, BudgetEnforcement, BudgetStatus, TenantPhase
from kubemeter_operator.money import round_half_up

DEFAULT_WARNING_PERCENT = 80


def warning_percent(budget: Budget) -> int:
    """The budget use (percent) from which the phase is Warning (see the module docstring)."""
    high = [t for t in budget.alert_thresholds if t >= DEFAULT_WARNING_PERCENT]
    if high:
        return min(high)
    return max(budget.alert_thresholds, default=DEFAULT_WARNING_PERCENT)


def budget_status(budget: Budget, total: Decimal) -> BudgetStatus:
    """Used = the period total; percent to 2 places half-up; thresholds compared exactly."""
    used_exact = Fraction(total) * 100 / Fraction(budget.limit)
    return BudgetStatus(
        limit=budget.limit,
        used=total,
        used_percent=round_half_up(used_exact, 2),
        remaining=budget.limit - total,
        thresholds_crossed=sorted(t for t in budget.alert_thresholds if used_exact >= t),
    )


def budget_phase(budget: Budget, status: BudgetStatus) -> TenantPhase | None:
    """The phase the budget alone calls for (None: it calls for nothing)."""
    if status.used >= status.limit and budget.enforcement is BudgetEnforcement.SCALE_DOWN:
        return TenantPhase.SUSPENDED
    if Fraction(status.used) * 100 >= Fraction(status.limit) * warning_percent(budget):
        return TenantPhase.WARNING
    return None
