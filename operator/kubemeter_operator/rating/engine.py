"""Rate a period's usage totals against a price plan: the statement of one tenant's period.

Pure: Decimal inputs, exact rational arithmetic, money rounded half-up per line.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.priceplan import Meter, MeterKind, PricePlanSpec
from kubemeter_operator.errors import InputError
from kubemeter_operator.money import exact, minor_units, round_half_up, to_decimal
from kubemeter_operator.rating.matching import Assignment, assign
from kubemeter_operator.rating.pricing import price
from kubemeter_operator.rating.statement import (
    Statement,
    StatementLine,
    TierLine,
    UnpricedUsage,
)
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import UsageTotals


def _line(meter: Meter, base: Fraction, places: int) -> StatementLine:
    quantity = base / meter.base_per_unit
    billable = max(Fraction(0), quantity - exact(meter.included))
    priced = price(meter.pricing, billable)
    cost = (
        round_half_up(quantity * exact(meter.unit_cost), places)
        if meter.unit_cost is not None
        else None
    )
    return StatementLine(
        meter=meter.name,
        display_name=meter.display_name,
        kind=meter.kind,
        unit=meter.unit,
        basis=meter.effective_basis if meter.kind is MeterKind.GPU_TIME else None,
        pricing_model=meter.pricing.model,
        quantity=to_decimal(base),
        billed_quantity=to_decimal(quantity),
        included=meter.included,
        billable=to_decimal(billable),
        tiers=[
            TierLine(
                tier=t.index,
                units=to_decimal(t.units),
                unit_price=t.unit_price,
                amount=to_decimal(t.units_amount),
                flat_fee=t.flat_fee,
            )
            for t in priced.tiers
        ],
        packages=priced.packages,
        amount_exact=to_decimal(priced.amount),
        amount=round_half_up(priced.amount, places),
        unit_cost=meter.unit_cost,
        cost=cost,
    )


def _unpriced(assignment: Assignment) -> list[UnpricedUsage]:
    return [
        UnpricedUsage(
            kind=u.key.kind,
            model=u.key.model or None,
            mig_profile=u.key.mig_profile or None,
            name=u.key.name or None,
            quantities=u.quantities,
            reason=u.reason,
        )
        for u in assignment.unpriced
    ]


def rate(
    plan: PricePlanSpec,
    totals: UsageTotals,
    *,
    period: Period,
    discount_percent: Decimal = Decimal(0),
) -> Statement:
    """The statement for `period` given the period's usage totals per key.

    Every plan meter gets a line (zero usage included). Each line is computed exactly and
    rounded half-up to the currency's minor unit; subtotal = platform fee + lines; the
    discount is the subtotal × percent / 100, rounded; total = subtotal − discount.
    """
    if not Decimal(0) <= discount_percent <= Decimal(100):
        raise InputError("discountPercent", f"{discount_percent} is not within 0..100")
    places = minor_units(plan.currency)
    assignment = assign(plan.meters, totals)
    lines = [_line(m, assignment.quantity(m.name), places) for m in plan.meters]
    platform_fee = round_half_up(plan.platform_fee, places)
    subtotal = exact(platform_fee) + sum((exact(line.amount) for line in lines), Fraction(0))
    discount = round_half_up(subtotal * exact(discount_percent) / 100, places)
    total = subtotal - exact(discount)
    cost = sum((exact(line.cost) for line in lines if line.cost is not None), Fraction(0))
    return Statement(
        currency=plan.currency,
        period=str(period),
        period_start=period.start,
        period_end=period.end,
        platform_fee=platform_fee,
        lines=lines,
        subtotal=round_half_up(subtotal, places),
        discount_percent=discount_percent,
        discount=discount,
        total=round_half_up(total, places),
        cost=round_half_up(cost, places),
        margin=round_half_up(total - cost, places),
        unpriced=_unpriced(assignment),
    )
