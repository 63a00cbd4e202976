"""Budget policy: what a period total means against a Tenant's budget. Pure.

- `budget_status`: used (the running period total, platform fee included, after discount),
  percent used (2 places, half-up), remaining, and the alert thresholds reached (compared
  exactly, never on the rounded percent).
- `warning_percent`: the lowest configured threshold of 80 % or more; with none in 80..100,
  the highest configured one; 80 % when no thresholds are configured.

The decision (thresholds newly crossed, phase, suspend or restore) is
:mod:`kubemeter_operator.budget.decision`. Imports no kopf, kubernetes or SQLAlchemy.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.tenant import Budget, BudgetStatus
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
