"""Late usage as an adjustment: what usage that arrived after a period was finalised adds to
that period, at that period's terms. Pure.

    adj = late_usage_adjustment(terms_plan, discount, Period(2026, 10), prior=billed, late=new)

`prior` is the old period's usage already billed (its final statement, plus late usage
billed on statements before this one); `late` is the usage billed now. The adjustment is
the difference between rating the old period with and without it, line by line:

    amount(meter) = charge(prior + late) − charge(prior)     (each rounded, as on invoices)
    discount      = discount(prior + late) − discount(prior)
    amount        = Σ amount(meter) − discount

so included quantities, graduated tiers and package blocks continue where the old period
left off, the platform fee is never charged twice, and the old period's final invoice plus
all its adjustments equals the rating of all its usage, to the minor unit. Under volume
pricing more usage can lower a charge: then the adjustment is negative (a credit).
"""

from __future__ import annotations

from decimal import Decimal

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.rating.engine import rate
from kubemeter_operator.rating.statement import Adjustment, AdjustmentLine, Statement
from kubemeter_operator.usage import Period, Quantities, UsageTotals


def _sum(a: UsageTotals, b: UsageTotals) -> UsageTotals:
    out: UsageTotals = {}
    for totals in (a, b):
        for key, qty in totals.items():
            out.setdefault(key, Quantities()).add(qty)
    return out


def late_usage_adjustment(
    plan: PricePlanSpec,
    discount_percent: Decimal,
    period: Period,
    *,
    prior: UsageTotals,
    late: UsageTotals,
) -> Adjustment:
    """The adjustment for `late` usage of `period`, on top of the `prior` usage billed."""
    before = rate(plan, prior, period=period, discount_percent=discount_percent)
    after = rate(plan, _sum(prior, late), period=period, discount_percent=discount_percent)
    lines = [
        AdjustmentLine(
            meter=new.meter,
            quantity=new.quantity - old.quantity,
            amount=new.amount - old.amount,
        )
        for old, new in zip(before.lines, after.lines, strict=True)
        if new.quantity != old.quantity or new.amount != old.amount
    ]
    alone = rate(plan, late, period=period)
    return Adjustment(
        period=str(period),
        description=f"late usage from {period}",
        currency=plan.currency,
        lines=lines,
        discount=after.discount - before.discount,
        amount=after.total - before.total,
        cost=after.cost - before.cost,
        unpriced=alone.unpriced,
    )


def with_adjustments(statement: Statement, adjustments: list[Adjustment]) -> Statement:
    """`statement` with `adjustments` billed on it (total, cost and margin updated)."""
    if not adjustments:
        return statement
    same = [a for a in adjustments if a.currency == statement.currency]
    extra = sum((a.amount for a in same), Decimal(0))
    extra_cost = sum((a.cost for a in same), Decimal(0))
    total = statement.total + extra
    cost = statement.cost + extra_cost
    return statement.model_copy(
        update={
            "adjustments": [*statement.adjustments, *adjustments],
            "adjustments_total": statement.adjustments_total + extra,
            "total": total,
            "cost": cost,
            "margin": total - cost,
        }
    )
