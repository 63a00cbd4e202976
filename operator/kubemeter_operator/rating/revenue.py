"""Revenue recognition: a period statement's money attributed to the UTC days of the period.

Pure (no database): give it the statement, the plan, and the tenant's usage totals per day.

- Usage revenue is recognised on the day it was consumed: each meter line's rounded amount
  is allocated over days in proportion to that day's quantity for that meter (the meter's
  quantity as rating computes it, i.e. after MIG shares and cached-token splits). A line
  with no usage quantity (e.g. a tier flat fee at zero usage) is spread evenly.
- The platform fee is spread evenly over the period's days.
- The discount (a percentage of the subtotal) is allocated in proportion to each day's
  pre-discount revenue (usage + fee), so a day's revenue never goes negative; evenly if the
  subtotal is zero.
- Adjustments (late usage of an earlier, finalised period billed on this statement) are
  spread evenly over the period's days, like the fee: the days they were consumed belong to
  a period whose books are closed.

Every allocation works in integer minor units with the largest-remainder method (ties go to
the earlier day), so the days of a period sum exactly to each line, and in total exactly to
the statement total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.money import minor_units
from kubemeter_operator.rating.engine import rate
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import UsageTotals


@dataclass
class DayRevenue:
    day: date
    usage: Decimal = Decimal(0)
    """Meter charges recognised this day."""
    platform_fee: Decimal = Decimal(0)
    discount: Decimal = Decimal(0)
    """Discount attributed to this day (a positive amount, subtracted)."""
    adjustments: Decimal = Decimal(0)
    """Late usage of earlier periods recognised this day (signed)."""
    by_meter: dict[str, Decimal] = field(default_factory=dict)

    @property
    def revenue(self) -> Decimal:
        return self.usage + self.platform_fee - self.discount + self.adjustments


def allocate(amount_minor: int, weights: Sequence[Fraction]) -> list[int]:
    """Split an integer amount over weights by largest remainder; parts sum to the amount.

    Zero total weight spreads evenly. Ties in the remainder go to the earlier position.
    """
    n = len(weights)
    if n == 0:
        if amount_minor:
            raise ValueError("cannot allocate a non-zero amount over no days")
        return []
    total = sum(weights, Fraction(0))
    if total == 0:
        weights = [Fraction(1)] * n
        total = Fraction(n)
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative")
    sign = -1 if amount_minor < 0 else 1
    amount = abs(amount_minor)
    exact = [amount * w / total for w in weights]
    parts = [int(e) for e in exact]  # floor: all non-negative
    left = amount - sum(parts)
    order = sorted(range(n), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return [sign * p for p in parts]


def _to_minor(amount: Decimal, places: int) -> int:
    scaled = amount.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of minor units")
    return int(scaled)


def _from_minor(units: int, places: int) -> Decimal:
    return Decimal(units).scaleb(-places)


def daily_meter_quantities(
    plan: PricePlanSpec, period: Period, daily: Mapping[date, UsageTotals]
) -> dict[date, dict[str, Fraction]]:
    """Each day's quantity per meter, as rating would count it for that day alone."""
    out: dict[date, dict[str, Fraction]] = {}
    for day, totals in daily.items():
        if not totals:
            continue
        stmt = rate(plan, totals, period=period)
        out[day] = {line.meter: Fraction(line.quantity) for line in stmt.lines}
    return out


def recognise(
    statement: Statement,
    plan: PricePlanSpec | None,
    daily: Mapping[date, UsageTotals],
) -> list[DayRevenue]:
    """The statement's revenue per day of its period (every day, in order).

    Without the plan (terms unknown) meter lines are spread evenly like the platform fee.
    """
    period = statement.billing_period
    days = period.days
    places = minor_units(statement.currency)
    per_day = (
        daily_meter_quantities(plan, period, {d: t for d, t in daily.items() if d in days})
        if plan is not None
        else {}
    )
    result = [DayRevenue(day=d) for d in days]
    usage_minor = [0] * len(days)
    for line in statement.lines:
        weights = [per_day.get(d, {}).get(line.meter, Fraction(0)) for d in days]
        parts = allocate(_to_minor(line.amount, places), weights)
        for i, part in enumerate(parts):
            usage_minor[i] += part
            if part:
                result[i].by_meter[line.meter] = _from_minor(part, places)
    fee_parts = allocate(_to_minor(statement.platform_fee, places), [Fraction(1)] * len(days))
    pre_discount = [Fraction(u + f) for u, f in zip(usage_minor, fee_parts, strict=True)]
    discount_parts = allocate(_to_minor(statement.discount, places), pre_discount)
    adjustment_parts = allocate(
        _to_minor(statement.adjustments_total, places), [Fraction(1)] * len(days)
    )
    for i, day in enumerate(result):
        day.usage = _from_minor(usage_minor[i], places)
        day.platform_fee = _from_minor(fee_parts[i], places)
        day.discount = _from_minor(discount_parts[i], places)
        day.adjustments = _from_minor(adjustment_parts[i], places)
    return result
