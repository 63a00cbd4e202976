"""Statement lines become Tenant status meters that the CRD schema accepts: billing-unit
figures are rounded for display (1 ms is a non-terminating fraction of a GPU-hour), while
the base quantity and the charge stay exact."""

from __future__ import annotations

import re
from decimal import Decimal

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.types import DECIMAL_PATTERN
from kubemeter_operator.rating import rate
from kubemeter_operator.status.builder import meter_usages
from kubemeter_operator.usage import Period, Quantities, UsageKey

PLAN = PricePlanSpec.model_validate(
    {
        "currency": "USD",
        "meters": [
            {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour", "included": "0.5",
             "pricing": {"model": "flat", "unitPrice": "3"}},
        ],
    }
)  # fmt: skip


def test_status_meters_fit_the_schema_and_keep_exact_base_units() -> None:
    totals = {UsageKey("gpu", "NVIDIA H100 80GB HBM3"): Quantities(allocated_ms=1_800_001)}
    statement = rate(PLAN, totals, period=Period(2026, 11))
    (meter,) = meter_usages(statement)
    wire = meter.to_api()
    for field in ("quantity", "billedQuantity", "included", "billable", "charge"):
        assert len(wire[field]) <= 40, (field, wire[field])
        assert re.match(DECIMAL_PATTERN, wire[field]), (field, wire[field])
    assert wire["quantity"] == "1800001"
    assert wire["billedQuantity"] == "0.5"  # 0.50000027... shown to 6 places
    assert meter.billable == Decimal("0")  # 0.00000027... hours rounds away for display
    assert wire["charge"] == "0.00"
