"""Property tests: graduated slices, window splitting, non-negativity, no rounding drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubemeter_operator.api.priceplan import PricePlanSpec, Pricing, Tier
from kubemeter_operator.api.usage import GpuUsage, TokenUsage, UsageRecord
from kubemeter_operator.rating import price, rate
from kubemeter_operator.usage import Period, Quantities, UsageKey, accumulate

D = Decimal
H100 = "NVIDIA H100 80GB HBM3"
HOUR = 3_600_000

money = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)
quantity = st.decimals(min_value=0, max_value=100_000, places=3, allow_nan=False)


@st.composite
def tiers(draw: st.DrawFn) -> list[Tier]:
    bounds = sorted(set(draw(st.lists(st.integers(1, 10_000), max_size=5))))
    prices = draw(st.lists(money, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    fees = draw(st.lists(money, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    ups: list[int | None] = [*bounds, None]
    return [
        Tier(up_to=None if u is None else D(u), unit_price=p, flat_fee=f)
        for u, p, f in zip(ups, prices, fees, strict=True)
    ]


@st.composite
def pricings(draw: st.DrawFn) -> Pricing:
    model = draw(st.sampled_from(["flat", "graduated", "volume", "package"]))
    if model == "flat":
        return Pricing(model="flat", unit_price=draw(money))
    if model == "package":
        size = draw(st.decimals(min_value=D("0.001"), max_value=1000, places=3))
        return Pricing(model="package", package_size=size, package_price=draw(money))
    return Pricing(model=model, tiers=draw(tiers()))


@given(tiers(), quantity)
def test_graduated_total_equals_the_sum_of_its_tier_slices(ts: list[Tier], qty: Decimal) -> None:
    priced = price(Pricing(model="graduated", tiers=ts), qty)
    lower = Fraction(0)
    expected = Fraction(0)
    for t in ts:
        if qty <= lower:
            break
        upper = Fraction(t.up_to) if t.up_to is not None else Fraction(qty)
        expected += (min(Fraction(qty), upper) - lower) * Fraction(t.unit_price)
        expected += Fraction(t.flat_fee)
        lower = upper
    assert priced.amount == expected
    assert sum(Fraction(t.units) for t in priced.tiers) == Fraction(qty)


@given(tiers(), quantity, quantity)
def test_graduated_charge_grows_with_the_quantity(ts: list[Tier], a: Decimal, b: Decimal) -> None:
    p = Pricing(model="graduated", tiers=ts)
    assert price(p, a + b).amount >= price(p, a).amount


@given(pricings(), quantity)
def test_amounts_are_never_negative(p: Pricing, qty: Decimal) -> None:
    priced = price(p, qty)
    assert priced.amount >= 0
    assert all(t.amount >= 0 for t in priced.tiers)


def _plan(p: Pricing, currency: str, fee: Decimal) -> PricePlanSpec:
    return PricePlanSpec.model_validate(
        {
            "currency": currency,
            "platformFee": str(fee),
            "meters": [
                {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour", "included": "1",
                 "pricing": p.to_api(), "unitCost": "1.7"},
                {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
                 "pricing": p.to_api()},
                {"name": "cached", "kind": "cachedPromptTokens", "unit": "1m-tokens",
                 "pricing": {"model": "flat", "unitPrice": "0.333"}},
            ],
        }
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    pricings(),
    st.sampled_from(["USD", "JPY", "BHD"]),
    money,
    st.decimals(min_value=0, max_value=100, places=3),
    st.integers(0, 500 * HOUR),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
def test_rounding_never_drifts_the_total_from_the_sum_of_the_lines(
    p: Pricing, currency: str, fee: Decimal, pct: Decimal, ms: int, prompt: int, cached: int
) -> None:
    cached = min(cached, prompt)
    totals = {
        UsageKey("gpu", H100, "3g.40gb"): Quantities(allocated_ms=ms),
        UsageKey("tokens", "m"): Quantities(prompt_tokens=prompt, cached_prompt_tokens=cached),
    }
    s = rate(_plan(p, currency, fee), totals, period=Period(2026, 11), discount_percent=pct)
    places = {"USD": 2, "JPY": 0, "BHD": 3}[currency]
    money_fields = [s.platform_fee, s.subtotal, s.discount, s.total, s.cost, s.margin]
    money_fields += [line.amount for line in s.lines]
    assert all(-v.as_tuple().exponent == places for v in money_fields)  # type: ignore[operator]
    assert s.subtotal == s.platform_fee + sum(line.amount for line in s.lines)
    assert s.total == s.subtotal - s.discount
    assert s.cost == sum(line.cost for line in s.lines if line.cost is not None)
    assert s.margin == s.total - s.cost
    assert s.total >= 0
    assert all(line.amount >= 0 for line in s.lines)
    assert abs(Fraction(s.discount) - Fraction(s.subtotal) * Fraction(pct) / 100) <= Fraction(
        1, 2 * 10**places
    )


# --- splitting usage into windows never changes a period's statement -----------------

NOV = Period(2026, 11)
PLAN = PricePlanSpec.model_validate(
    {
        "currency": "USD",
        "platformFee": "10",
        "meters": [
            {"name": "h100", "kind": "gpuTime", "gpuModel": H100, "unit": "gpu-hour",
             "included": "2", "pricing": {"model": "graduated", "tiers": [
                 {"upTo": "3", "unitPrice": "4.5"},
                 {"unitPrice": "3.3", "flatFee": "7"}]}},
            {"name": "active", "kind": "gpuTime", "unit": "gpu-second", "basis": "active",
             "pricing": {"model": "volume", "tiers": [
                 {"upTo": "1000", "unitPrice": "0.002"}, {"unitPrice": "0.001"}]}},
            {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
             "pricing": {"model": "package", "packageSize": "7", "packagePrice": "0.13"}},
        ],
    }
)  # fmt: skip


def _cut(draw: st.DrawFn, total: int, parts: int) -> list[int]:
    """Split `total` into `parts` non-negative integers."""
    points = sorted(draw(st.lists(st.integers(0, total), min_size=parts - 1, max_size=parts - 1)))
    return [b - a for a, b in zip([0, *points], [*points, total], strict=True)]


@st.composite
def gpu_window_and_split(draw: st.DrawFn) -> tuple[GpuUsage, list[GpuUsage]]:
    """A window inside November and an arbitrary split into sub-windows and sub-amounts."""
    start_ms = draw(st.integers(0, 20 * 24 * HOUR))
    wall = draw(st.integers(1, 5 * 24 * HOUR))
    n = draw(st.integers(1, min(6, wall)))
    model = draw(st.sampled_from([H100, "NVIDIA A100-SXM4-80GB"]))
    mig = draw(st.sampled_from([None, "3g.40gb", "1g.10gb"]))
    alloc = draw(st.integers(0, 8 * wall))
    active = draw(st.integers(0, alloc))
    t0 = NOV.start + timedelta(milliseconds=start_ms)
    whole = GpuUsage(model=model, mig_profile=mig, allocated_ms=alloc, active_ms=active,
                     window_start=t0, window_end=t0 + timedelta(milliseconds=wall))  # fmt: skip
    walls = _cut(draw, wall - n, n)  # each part is at least 1 ms wide
    allocs = _cut(draw, alloc, n)
    parts, cursor, active_left = [], t0, active
    for i, (w, a) in enumerate(zip(walls, allocs, strict=True)):
        later = sum(allocs[i + 1 :])  # the active ms left must fit the later parts
        act = draw(st.integers(max(0, active_left - later), min(a, active_left)))
        active_left -= act
        end = cursor + timedelta(milliseconds=w + 1)
        parts.append(whole.model_copy(update={"window_start": cursor, "window_end": end,
                                               "allocated_ms": a, "active_ms": act}))  # fmt: skip
        cursor = end
    assert active_left == 0
    return whole, parts


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(gpu_window_and_split(), min_size=1, max_size=4))
def test_splitting_gpu_windows_never_changes_the_statement(
    windows: list[tuple[GpuUsage, list[GpuUsage]]],
) -> None:
    whole: list[UsageRecord] = [w for w, _ in windows]
    split: list[UsageRecord] = [p for _, parts in windows for p in parts]
    a = rate(PLAN, accumulate(whole, NOV), period=NOV)
    b = rate(PLAN, accumulate(split, NOV), period=NOV)
    assert a == b


@settings(deadline=None)
@given(
    st.integers(1, 200),  # GPUs
    st.integers(1, 48 * HOUR),  # wall ms of a window straddling Nov/Dec
    st.integers(0, 48 * HOUR),
    st.lists(st.integers(1, 96 * HOUR), max_size=5),  # cut points
    st.integers(0, 200),
)
def test_splitting_a_straddling_window_anywhere_keeps_each_period_unchanged(
    gpus: int, wall: int, before: int, cuts: list[int], active_gpus: int
) -> None:
    # allocated = wall x GPUs (and active = wall x k): proportional splits are exact.
    active_gpus = min(active_gpus, gpus)
    before = min(before, wall - 1)
    start = Period(2026, 12).start - timedelta(milliseconds=before)
    end = start + timedelta(milliseconds=wall)

    def window(s: datetime, e: datetime) -> GpuUsage:
        ms = (e - s) // timedelta(milliseconds=1)
        return GpuUsage(model=H100, allocated_ms=ms * gpus, active_ms=ms * active_gpus,
                        window_start=s, window_end=e)  # fmt: skip

    points = sorted({c for c in cuts if c < wall})
    edges = [start, *(start + timedelta(milliseconds=c) for c in points), end]
    split: list[UsageRecord] = [window(s, e) for s, e in pairwise(edges) if e > s]
    whole: list[UsageRecord] = [window(start, end)]
    for period in (NOV, Period(2026, 12)):
        assert rate(PLAN, accumulate(whole, period), period=period) == rate(
            PLAN, accumulate(split, period), period=period
        )


@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)), min_size=1, max_size=8))
def test_splitting_token_events_never_changes_the_statement(pairs: list[tuple[int, int]]) -> None:
    ts = NOV.start + timedelta(days=3)
    events = [
        TokenUsage(model="m", prompt_tokens=p + c, cached_prompt_tokens=c, timestamp=ts)
        for p, c in pairs
    ]
    merged = TokenUsage(
        model="m",
        prompt_tokens=sum(p + c for p, c in pairs),
        cached_prompt_tokens=sum(c for _, c in pairs),
        timestamp=ts.astimezone(UTC),
    )
    many: list[UsageRecord] = list(events)
    one: list[UsageRecord] = [merged]
    assert rate(PLAN, accumulate(many, NOV), period=NOV) == rate(
        PLAN, accumulate(one, NOV), period=NOV
    )
