"""The recent burn rate that `budget.stopBefore` looks ahead with. Pure.

    rate = recent_burn_per_hour(samples, now=now, total=total)

From the running totals the operator saw at earlier cycles of the same period: the oldest
sample within `window` (15 minutes) that is at least `min_span` (one minute) old gives
`(total_now - total_then) / (now - then)`, in money per hour, exact. None when no sample is
old enough (the operator just started, or the period just began): then nothing is
forecast, and only the limit itself stops work. Unlike the status forecast this never
falls back on the period-to-date average: a tenant that just started a large job burns
far faster than its month so far, and that is what must stop before the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.money import round_half_up

WINDOW = timedelta(minutes=15)
MIN_SPAN = timedelta(minutes=1)
_PLACES = 12


@dataclass(frozen=True)
class TotalSample:
    """The running period total (after discount, platform fee included) at an instant."""

    at: datetime
    total: Decimal


def recent_burn_per_hour(
    samples: Sequence[TotalSample],
    *,
    now: datetime,
    total: Decimal,
    window: timedelta = WINDOW,
    min_span: timedelta = MIN_SPAN,
) -> Decimal | None:
    old = [s for s in samples if now - window <= s.at <= now - min_span]
    if not old:
        return None
    first = min(old, key=lambda s: s.at)
    seconds = Fraction((now - first.at) // timedelta(microseconds=1), 1_000_000)
    rate = (Fraction(total) - Fraction(first.total)) * 3600 / seconds
    return round_half_up(max(rate, Fraction(0)), _PLACES)
