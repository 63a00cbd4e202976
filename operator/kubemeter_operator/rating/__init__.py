"""Rating: usage totals x price plan -> statement. Pure (no kopf, kubernetes or SQLAlchemy).

totals = usage.accumulate(records, period)    # or the ledger's SQL sums per UsageKey
statement = rate(plan_spec, totals, period=period, discount_percent=tenant.discount_percent)
"""

from kubemeter_operator.money import minor_units, round_half_up, round_money
from kubemeter_operator.rating.engine import rate
from kubemeter_operator.rating.matching import (
    MIG_COMPUTE_SLICES,
    Assignment,
    assign,
    gpu_meter_for,
    mig_share,
    model_meter_for,
)
from kubemeter_operator.rating.pricing import Priced, TierCharge, price
from kubemeter_operator.rating.statement import (
    Statement,
    StatementLine,
    TierLine,
    UnpricedUsage,
)

__all__ = [
    "MIG_COMPUTE_SLICES",
    "Assignment",
    "Priced",
    "Statement",
    "StatementLine",
    "TierCharge",
    "TierLine",
    "UnpricedUsage",
    "assign",
    "gpu_meter_for",
    "mig_share",
    "minor_units",
    "model_meter_for",
    "price",
    "rate",
    "round_half_up",
    "round_money",
]
