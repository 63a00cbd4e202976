"""Forecast of a tenant's period total at its recent burn rate. Pure.

Definitions (exact `Decimal`/`Fraction` arithmetic; money rounded half-up at the end):

- fixed part: the platform fee after the discount, `platformFee × (1 − discount% / 100)`;
  the variable part of the running total is `total − fixed` (so a discount cannot make it
  negative).
- recent burn rate: money per second. From `samples` (running totals the operator saw at
  earlier cycles of the same period): take the oldest sample no older than
  `RECENT_WINDOW` (one hour) before `now`; if it is at least `MIN_SPAN` (five minutes) old,
  the rate is `(total_now − total_then) / (now − then)`. Otherwise (operator just started,
  no samples yet) the rate is the period-to-date average `variable / (now − period start)`.
- projected period total: `total_now + rate × (period end − now)`, rounded half-up to the
  currency's minor unit. With the period-to-date rate this is exactly the linear
  extrapolation of the variable part over the elapsed time, plus the fixed part.
- budget exhausted at: when a budget is set, `now + (limit − total_now) / rate`, truncated
  to the minute; none when the rate is zero or that instant is at or after the period end.
  When the total already reached the limit it is the previous estimate if that was in the
  past (else `now` truncated to the minute), so it does not move every cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.tenant import Forecast
from kubemeter_operator.budget.burn import TotalSample as TotalSample
from kubemeter_operator.money import round_half_up
from kubemeter_operator.usage.periods import Period

RECENT_WINDOW = timedelta(hours=1)
MIN_SPAN = timedelta(minutes=5)


def _seconds(delta: timedelta) -> Fraction:
    return Fraction(delta.days * 86_400 + delta.seconds) + Fraction(delta.microseconds, 10**6)


def burn_rate(
    *,
    now: datetime,
    period: Period,
    total: Decimal,
    fixed: Decimal,
    samples: Sequence[TotalSample] = (),
) -> Fraction:
    """Money per second at the recent burn rate (see the module docstring)."""
    window_start = max(now - RECENT_WINDOW, period.start)
    recent = [s for s in samples if window_start <= s.at <= now - MIN_SPAN]
    if recent:
        oldest = min(recent, key=lambda s: s.at)
        rate = (Fraction(total) - Fraction(oldest.total)) / _seconds(now - oldest.at)
        return max(rate, Fraction(0))
    elapsed = _seconds(now - period.start)
    if elapsed <= 0:
        return Fraction(0)
    variable = max(Fraction(total) - Fraction(fixed), Fraction(0))
    return variable / elapsed


def _minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def forecast(
    *,
    now: datetime,
    period: Period,
    total: Decimal,
    fixed: Decimal,
    places: int,
    budget_limit: Decimal | None = None,
    samples: Sequence[TotalSample] = (),
    previous: Forecast | None = None,
) -> Forecast:
    now = min(max(now, period.start), period.end)
    rate = burn_rate(now=now, period=period, total=total, fixed=fixed, samples=samples)
    remaining = _seconds(period.end - now)
    projected = round_half_up(Fraction(total) + rate * remaining, places)
    exhausted: datetime | None = None
    if budget_limit is not None:
        if total >= budget_limit:
            before = previous.budget_exhausted_at if previous is not None else None
            exhausted = before if before is not None and before <= now else _minute(now)
        elif rate > 0:
            seconds = (Fraction(budget_limit) - Fraction(total)) / rate
            if seconds < remaining:
                exhausted = _minute(now + timedelta(seconds=float(seconds)))
    return Forecast(projected_total=projected, budget_exhausted_at=exhausted)
