"""Usage, before any price: keys, summed quantities, billing periods and UTC days. Pure.

    totals = accumulate(records, Period.parse("2026-11"))   # UsageKey -> Quantities
    for period, part in split_by_period(gpu_window): ...    # exact millisecond split

Imports no kopf, kubernetes or SQLAlchemy, and nothing that prices (see `rating`).
"""

from kubemeter_operator.usage.days import split_by_day, split_gpu_window_by_day
from kubemeter_operator.usage.periods import Period, split_by_period, split_gpu_window
from kubemeter_operator.usage.tenants import UNASSIGNED
from kubemeter_operator.usage.totals import (
    Quantities,
    UsageKey,
    UsageTotals,
    accumulate,
    key_and_quantities,
)

__all__ = [
    "UNASSIGNED",
    "Period",
    "Quantities",
    "UsageKey",
    "UsageTotals",
    "accumulate",
    "key_and_quantities",
    "split_by_day",
    "split_by_period",
    "split_gpu_window",
    "split_gpu_window_by_day",
]
