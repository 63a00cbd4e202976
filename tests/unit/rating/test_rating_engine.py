"""rate(): meters, included quantities, rounding, discount, tokens, MIG, basis, periods."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import USAGE_LIST, UsageRecord
from kubemeter_operator.errors import InputError
from kubemeter_operator.rating import Statement, mig_share, rate
from kubemeter_operator.status.builder import meter_usages
from kubemeter_operator.usage import Period, Quantities, UsageKey, accumulate

D = Decimal
NOV = Period(2026, 11)
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
HOUR = 3_600_000


def plan(*meters: dict[str, Any], currency: str = "USD", fee: str = "0") -> PricePlanSpec:
    return PricePlanSpec.model_validate(
        {"currency": currency, "platformFee": fee, "meters": list(meters)}
    )


def flat(name: str, kind: str, unit: str, price: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "unit": unit,
        "pricing": {"model": "flat", "unitPrice": price},
        **extra,
    }


def gpu(model: str, alloc: int, active: int = 0, mig: str = "") -> tuple[UsageKey, Quantities]:
    return UsageKey("gpu", model, mig), Quantities(allocated_ms=alloc, active_ms=active)


def tokens(model: str, prompt: int, completion: int, cached: int) -> tuple[UsageKey, Quantities]:
    return UsageKey("tokens", model), Quantities(
        prompt_tokens=prompt, completion_tokens=completion, cached_prompt_tokens=cached
    )


def records(*raw: dict[str, Any]) -> list[UsageRecord]:
    return USAGE_LIST.validate_python(list(raw))


def test_every_meter_gets_a_line_and_the_total_is_the_sum_of_rounded_lines() -> None:
    p = plan(
        flat("a", "gpuTime", "gpu-hour", "0.125", gpuModel=H100),
        flat("b", "gpuTime", "gpu-hour", "1", gpuModel=A100),
        fee="10.005",
    )
    s = rate(p, dict([gpu(H100, HOUR)]), period=NOV)
    assert [line.meter for line in s.lines] == ["a", "b"]
    assert s.line("a").amount_exact == D("0.125")
    assert s.line("a").amount == D("0.13")  # half-up
    assert s.line("b").amount == D("0.00")
    assert s.platform_fee == D("10.01")  # the fee is a rounded line too
    assert s.subtotal == D("10.14")
    assert s.total == D("10.14")
    assert s.period == "2026-11"
    assert s.period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert s.period_end == datetime(2026, 12, 1, tzinfo=UTC)


def test_rounding_is_per_line_not_on_the_sum() -> None:
    # Two lines of 0.004 each round to 0.00; the total is 0.00, not round(0.008) = 0.01.
    p = plan(
        flat("a", "requests", "request", "0.004", model="m1"),
        flat("b", "requests", "request", "0.004", model="m2"),
    )
    totals = {
        UsageKey("requests", "m1"): Quantities(requests=1),
        UsageKey("requests", "m2"): Quantities(requests=1),
    }
    s = rate(p, totals, period=NOV)
    assert [line.amount for line in s.lines] == [D("0.00"), D("0.00")]
    assert s.total == D("0.00")


@pytest.mark.parametrize(
    ("currency", "price", "expected"),
    [("USD", "0.124", "0.12"), ("USD", "0.125", "0.13"), ("JPY", "2.5", "3"),
     ("JPY", "2.49", "2"), ("BHD", "0.0125", "0.013"), ("BHD", "0.0124", "0.012")],
)  # fmt: skip
def test_currency_minor_units(currency: str, price: str, expected: str) -> None:
    p = plan(flat("r", "requests", "request", price), currency=currency)
    s = rate(p, {UsageKey("requests"): Quantities(requests=1)}, period=NOV)
    assert str(s.total) == expected
    assert str(s.line("r").amount) == expected


@pytest.mark.parametrize(
    ("used_hours", "included", "billable"),
    [(10, "4", "6"), (4, "4", "0"), (3, "4", "0"), (0, "4", "0"), (10, "0", "10")],
)
def test_included_quantity(used_hours: int, included: str, billable: str) -> None:
    p = plan(flat("g", "gpuTime", "gpu-hour", "2", included=included, unitCost="1"))
    s = rate(p, dict([gpu(H100, used_hours * HOUR)]), period=NOV)
    line = s.line("g")
    assert line.billable == D(billable)
    assert line.amount == D(billable) * 2
    assert line.cost == D(used_hours)  # COGS counts included units too
    assert line.included == D(included)


def test_discount_is_rounded_half_up_and_is_its_own_line() -> None:
    p = plan(flat("r", "requests", "request", "1"), fee="0.25")
    s = rate(
        p, {UsageKey("requests"): Quantities(requests=1)}, period=NOV, discount_percent=D("10")
    )
    # subtotal 1.25; 10 % = 0.125 -> 0.13; total 1.12
    assert (s.subtotal, s.discount, s.total) == (D("1.25"), D("0.13"), D("1.12"))
    assert s.discount_percent == D(10)
    full = rate(p, {}, period=NOV, discount_percent=D(100))
    assert (full.discount, full.total) == (D("0.25"), D("0.00"))
    with pytest.raises(InputError, match="discountPercent"):
        rate(p, {}, period=NOV, discount_percent=D(101))


def test_cost_and_margin() -> None:
    p = plan(flat("g", "gpuTime", "gpu-hour", "1", unitCost="3"))
    s = rate(p, dict([gpu(H100, 2 * HOUR)]), period=NOV)
    assert (s.total, s.cost, s.margin) == (D("2.00"), D("6.00"), D("-4.00"))
    assert json.loads(s.to_json())["margin"] == "-4.00"


def test_cached_tokens_are_billed_once_never_by_both_meters() -> None:
    meters = (
        flat("p", "promptTokens", "1k-tokens", "1", model=LLAMA),
        flat("c", "cachedPromptTokens", "1k-tokens", "0.1", model=LLAMA),
        flat("o", "completionTokens", "1k-tokens", "2", model=LLAMA),
    )
    totals = dict([tokens(LLAMA, 10_000, 3_000, 4_000)])
    s = rate(plan(*meters), totals, period=NOV)
    assert s.line("p").quantity == 6_000  # prompt - cached
    assert s.line("c").quantity == 4_000
    assert s.line("o").quantity == 3_000
    assert s.total == D("6.00") + D("0.40") + D("6.00")
    assert s.unpriced == []


def test_cached_tokens_without_a_cached_meter_are_unpriced_not_billed_as_prompt() -> None:
    meters = (flat("p", "promptTokens", "token", "1", model=LLAMA),)
    s = rate(plan(*meters), dict([tokens(LLAMA, 10, 0, 4)]), period=NOV)
    assert s.line("p").quantity == 6
    assert len(s.unpriced) == 1
    assert s.unpriced[0].quantities == {"cachedPromptTokens": D(4)}


def test_token_meter_matching_prefers_the_exact_model_then_the_modelless_meter() -> None:
    meters = (
        flat("llama", "completionTokens", "token", "2", model=LLAMA),
        flat("any", "completionTokens", "token", "1"),
    )
    totals = dict([tokens(LLAMA, 0, 5, 0), tokens("other", 0, 7, 0)])
    s = rate(plan(*meters), totals, period=NOV)
    assert (s.line("llama").quantity, s.line("any").quantity) == (5, 7)


def test_steps_requests_and_custom_matching() -> None:
    meters = (
        flat("steps-llama", "agentSteps", "step", "1", model=LLAMA),
        flat("req", "requests", "1k-requests", "1"),
        flat("credits", "custom", "unit", "2", customName="credits"),
    )
    totals = {
        UsageKey("steps", LLAMA): Quantities(steps=3),
        UsageKey("steps"): Quantities(steps=4),  # no model-less steps meter: unpriced
        UsageKey("requests", "x"): Quantities(requests=1500),
        UsageKey("custom", name="credits"): Quantities(custom=D("1.25")),
        UsageKey("custom", name="other"): Quantities(custom=D("9")),
    }
    s = rate(plan(*meters), totals, period=NOV)
    assert s.line("steps-llama").quantity == 3
    assert s.line("req").billed_quantity == D("1.5")
    assert s.line("credits").amount == D("2.50")
    assert [(u.kind, u.model, u.name, u.quantities) for u in s.unpriced] == [
        ("custom", None, "other", {"custom": D(9)}),
        ("steps", None, None, {"steps": D(4)}),
    ]


def test_unpriced_gpu_usage_is_reported_not_dropped() -> None:
    s = rate(plan(flat("h", "gpuTime", "gpu-hour", "1", gpuModel=H100)),
             dict([gpu("NVIDIA L4", 5, 2)]), period=NOV)  # fmt: skip
    assert s.total == D("0.00")
    [u] = s.unpriced
    assert (u.kind, u.model, u.quantities) == (
        "gpu",
        "NVIDIA L4",
        {"allocatedMs": 5, "activeMs": 2},
    )
    assert "gpuTime" in u.reason


def test_mig_profile_meter_beats_model_meter_beats_wildcard() -> None:
    meters = (
        flat("any", "gpuTime", "gpu-hour", "1"),
        flat("h100", "gpuTime", "gpu-hour", "1", gpuModel=H100),
        flat("h100-1g", "gpuTime", "gpu-hour", "1", gpuModel=H100, migProfile="1g.10gb"),
        flat("any-2g", "gpuTime", "gpu-hour", "1", migProfile="2g.20gb"),
    )
    totals = dict(
        [
            gpu(H100, 7 * HOUR, mig="1g.10gb"),  # own meter, full quantity
            gpu(H100, 7 * HOUR, mig="2g.20gb"),  # profile meter without model beats h100
            gpu(H100, 7 * HOUR, mig="3g.40gb"),  # no profile meter: 3/7 on the model meter
            gpu(H100, 1 * HOUR),
            gpu(A100, 7 * HOUR, mig="1g.10gb"),  # h100-1g is H100 only: wildcard, 1/7
            gpu(A100, 2 * HOUR),
        ]
    )
    s = rate(plan(*meters), totals, period=NOV)
    assert s.line("h100-1g").quantity == 7 * HOUR
    assert s.line("any-2g").quantity == 7 * HOUR
    assert s.line("h100").quantity == 3 * HOUR + HOUR
    assert s.line("any").quantity == HOUR + 2 * HOUR
    assert s.unpriced == []


def test_mig_share_applies_to_the_period_sum_rounded_half_up_to_whole_ms() -> None:
    assert mig_share("3g.40gb") == Fraction(3, 7)
    assert str(mig_share("1g.10gb+me")) == "1/7"
    assert mig_share("7g.80gb") == 1
    assert mig_share("8g.90gb") is None
    p = plan(flat("h", "gpuTime", "gpu-second", "1", gpuModel=H100))
    # 1000 ms x 2/7 = 285.714... -> 286 ms
    s = rate(p, dict([gpu(H100, 1000, mig="2g.20gb")]), period=NOV)
    assert s.line("h").quantity == 286
    # 7 records of 1 ms each on 1g: each alone would round 1/7 to 0; the sum 7 ms -> 1 ms.
    recs = records(
        *[
            {"kind": "gpu", "model": H100, "migProfile": "1g.10gb", "allocatedMs": 1,
             "windowStart": f"2026-11-0{i + 1}T00:00:00Z",
             "windowEnd": f"2026-11-0{i + 1}T00:00:01Z"}
            for i in range(7)
        ]
    )  # fmt: skip
    assert rate(p, accumulate(recs, NOV), period=NOV).line("h").quantity == 1
    # Each key rounds on its own sum: 7 x 1/7 = 1 ms; 14 x 2/7 = 4 ms.
    s = rate(p, dict([gpu(H100, 7, mig="1g.10gb"), gpu(H100, 14, mig="2g.20gb")]), period=NOV)
    assert s.line("h").quantity == 1 + 4


def test_invalid_mig_profile_slices_stay_unpriced() -> None:
    p = plan(flat("h", "gpuTime", "gpu-hour", "1"))
    s = rate(p, {UsageKey("gpu", H100, "9g.90gb"): Quantities(allocated_ms=5)}, period=NOV)
    assert s.line("h").quantity == 0
    assert s.unpriced[0].mig_profile == "9g.90gb"


def test_allocated_vs_active_basis() -> None:
    meters = (
        flat("alloc", "gpuTime", "gpu-hour", "1", gpuModel=H100),
        flat("active", "gpuTime", "gpu-hour", "1", gpuModel=A100, basis="active"),
    )
    totals = dict([gpu(H100, 4 * HOUR, HOUR), gpu(A100, 4 * HOUR, 3 * HOUR)])
    s = rate(plan(*meters), totals, period=NOV)
    assert (s.line("alloc").billed_quantity, s.line("alloc").basis) == (4, "allocated")
    assert (s.line("active").billed_quantity, s.line("active").basis) == (3, "active")


def test_window_straddling_a_month_is_split_exactly() -> None:
    p = plan(flat("h", "gpuTime", "gpu-hour", "1"))
    recs = records(
        {"kind": "gpu", "model": H100, "allocatedMs": 4 * HOUR, "activeMs": 0,
         "windowStart": "2026-10-31T23:00:00Z", "windowEnd": "2026-11-01T01:00:00Z"}
    )  # fmt: skip
    oct_, nov = (rate(p, accumulate(recs, per), period=per) for per in (Period(2026, 10), NOV))
    assert oct_.line("h").quantity == 2 * HOUR
    assert nov.line("h").quantity == 2 * HOUR


def test_window_straddling_new_year_is_split_into_december_and_january() -> None:
    p = plan(flat("h", "gpuTime", "gpu-second", "1"))
    recs = records(
        {"kind": "gpu", "model": H100, "allocatedMs": 9001, "activeMs": 3,
         "windowStart": "2026-12-31T23:59:57Z", "windowEnd": "2027-01-01T00:00:06Z"}
    )  # fmt: skip
    dec = rate(p, accumulate(recs, Period(2026, 12)), period=Period(2026, 12))
    jan = rate(p, accumulate(recs, Period(2027, 1)), period=Period(2027, 1))
    assert dec.period == "2026-12"
    assert jan.period == "2027-01"
    # 3 s of 9 s wall in December: 9001 x 3/9 = 3000.33 -> 3000 ms; January the rest.
    assert (dec.line("h").quantity, jan.line("h").quantity) == (3000, 6001)
    assert Period(2026, 12).next() == Period(2027, 1)


def test_meter_usages_for_tenant_status() -> None:
    p = plan(flat("g", "gpuTime", "gpu-hour", "2", included="1"))
    s = rate(p, dict([gpu(H100, 3 * HOUR)]), period=NOV)
    [mu] = meter_usages(s)
    assert mu.to_api() == {
        "name": "g",
        "kind": "gpuTime",
        "unit": "gpu-hour",
        "quantity": str(3 * HOUR),
        "billedQuantity": "3",
        "included": "1",
        "billable": "2",
        "charge": "4.00",
    }


def test_statement_round_trips_as_json_with_decimal_strings() -> None:
    p = plan(flat("g", "gpuTime", "gpu-hour", "2"))
    s = rate(p, dict([gpu(H100, 1)]), period=NOV)
    data = json.loads(s.to_json())
    assert data["lines"][0]["billedQuantity"].startswith("0.000000277777")
    assert isinstance(data["total"], str)
    assert Statement.model_validate_json(s.to_json()) == s


def test_rating_modules_import_no_kopf_kubernetes_or_sqlalchemy() -> None:
    code = (
        "import sys, json\n"
        "import kubemeter_operator.rating\n"
        "import kubemeter_operator.rating.engine, kubemeter_operator.rating.matching\n"
        "import kubemeter_operator.rating.pricing, kubemeter_operator.money\n"
        "import kubemeter_operator.rating.statement, kubemeter_operator.usage.totals\n"
        "import kubemeter_operator.usage.periods\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    banned = [m for m in loaded if m.split(".")[0] in {"kopf", "kubernetes", "sqlalchemy"}]
    assert banned == []


def test_custom_quantities_sum_exactly_beyond_the_default_decimal_precision() -> None:
    p = plan(flat("c", "custom", "unit", "1", customName="credits"))
    recs = records(
        *[
            {"kind": "custom", "name": "credits", "quantity": q,
             "timestamp": "2026-11-02T00:00:00Z"}
            for q in ("1" * 30, "0.000000000001")
        ]
    )  # fmt: skip
    s = rate(p, accumulate(recs, NOV), period=NOV)
    assert s.line("c").quantity == D("1" * 30 + ".000000000001")
    assert s.total == D("1" * 30 + ".00")
