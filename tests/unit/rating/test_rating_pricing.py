"""Pricing models and rounding, pinned at every edge."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from kubemeter_operator.api.priceplan import Pricing
from kubemeter_operator.errors import InputError
from kubemeter_operator.money import round_half_up, round_money, to_decimal
from kubemeter_operator.rating.pricing import (
    packages_needed,
    price,
    price_graduated,
    price_volume,
    volume_tier,
)

D = Decimal

GRADUATED = Pricing.model_validate(
    {
        "model": "graduated",
        "tiers": [
            {"upTo": "100", "unitPrice": "1.00"},
            {"upTo": "1000", "unitPrice": "0.50", "flatFee": "10"},
            {"unitPrice": "0.25", "flatFee": "100"},
        ],
    }
)
VOLUME = Pricing.model_validate({**GRADUATED.to_api(), "model": "volume"})


def amount(pricing: Pricing, billable: str | int) -> Fraction:
    return price(pricing, D(billable)).amount


def test_flat_is_billable_times_unit_price() -> None:
    p = Pricing.model_validate({"model": "flat", "unitPrice": "0.03"})
    assert amount(p, "12.5") == Fraction("0.375")
    assert amount(p, 0) == 0
    assert price(p, 7).tiers == ()


@pytest.mark.parametrize(
    ("billable", "expected"),
    [
        ("0", "0"),  # reaches no tier: no flat fee either
        ("0.5", "0.5"),
        ("100", "100"),  # exactly at upTo: still tier 0 only
        ("100.001", "110.0005"),  # just above: tier 1 reached, its flat fee added
        ("1000", str(100 + 900 * D("0.5") + 10)),  # 560
        ("1000.5", str(100 + 450 + 10 + D("0.125") + 100)),  # tier 2 reached: 660.125
        ("5000", str(100 + 450 + 10 + 4000 * D("0.25") + 100)),  # 1660
    ],
)
def test_graduated_each_tier_prices_its_slice_and_reached_flat_fees(
    billable: str, expected: str
) -> None:
    assert amount(GRADUATED, billable) == Fraction(expected)


def test_graduated_breakdown() -> None:
    priced = price(GRADUATED, D("1000.5"))
    assert [(t.index, t.units, t.flat_fee) for t in priced.tiers] == [
        (0, Fraction(100), D(0)),
        (1, Fraction(900), D(10)),
        (2, Fraction("0.5"), D(100)),
    ]
    assert sum(t.amount for t in priced.tiers) == priced.amount
    assert price(GRADUATED, 0).tiers == ()


@pytest.mark.parametrize(
    ("billable", "tier", "expected"),
    [
        ("0.001", 0, "0.001"),
        ("100", 0, "100"),  # exactly at upTo: the tier holds it (upTo is inclusive)
        ("100.001", 1, str(D("100.001") * D("0.5") + 10)),  # all units at tier 1 + its fee
        ("1000", 1, "510"),
        ("1000.5", 2, str(D("1000.5") * D("0.25") + 100)),
    ],
)
def test_volume_matched_tier_prices_everything_and_adds_only_its_fee(
    billable: str, tier: int, expected: str
) -> None:
    assert VOLUME.tiers is not None
    assert volume_tier(VOLUME.tiers, D(billable)) == tier
    priced = price(VOLUME, D(billable))
    assert priced.amount == Fraction(expected)
    assert [t.index for t in priced.tiers] == [tier]


def test_volume_zero_billable_costs_nothing_not_even_a_flat_fee() -> None:
    tiers = Pricing.model_validate(
        {"model": "volume", "tiers": [{"unitPrice": "1", "flatFee": "50"}]}
    ).tiers
    assert tiers is not None
    assert price_volume(tiers, 0).amount == 0
    assert price_volume(tiers, D("0.1")).amount == Fraction("50.1")
    assert price_graduated(tiers, 0).amount == 0


@pytest.mark.parametrize(
    ("billable", "packages"),
    [("0", 0), ("0.0001", 1), ("499", 1), ("500", 1), ("500.5", 2), ("1000", 2), ("1001", 3)],
)
def test_package_charges_every_started_package(billable: str, packages: int) -> None:
    p = Pricing.model_validate({"model": "package", "packageSize": "500", "packagePrice": "2.50"})
    priced = price(p, D(billable))
    assert priced.packages == packages
    assert priced.amount == packages * Fraction("2.50")
    assert packages_needed(D("0.3"), D("0.9")) == 3  # exact: 0.9/0.3 is exactly 3


def test_negative_billable_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        price(GRADUATED, D(-1))


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        ("0.125", 2, "0.13"),  # half-up at .5, not banker's rounding
        ("0.124", 2, "0.12"),
        ("0.135", 2, "0.14"),
        ("0.145", 2, "0.15"),
        ("2.5", 0, "3"),  # JPY
        ("3.5", 0, "4"),
        ("0.4999", 0, "0"),
        ("1.0005", 3, "1.001"),  # BHD
        ("1.0004", 3, "1.000"),
        ("12", 2, "12.00"),
        ("-0.125", 2, "-0.13"),  # half away from zero
    ],
)
def test_round_half_up(value: str, places: int, expected: str) -> None:
    result = round_half_up(D(value), places)
    assert str(result) == expected


def test_round_half_up_is_exact_where_a_decimal_context_would_not_be() -> None:
    # 3 ms at 6000 per gpu-hour = exactly 0.005, though 3/3,600,000 does not terminate.
    assert round_half_up(Fraction(3, 3_600_000) * 6000, 2) == D("0.01")


def test_round_money_by_currency() -> None:
    assert str(round_money(D("1234.5"), "JPY")) == "1235"
    assert str(round_money(D("1.2345"), "BHD")) == "1.235"
    assert str(round_money(D("1.005"), "USD")) == "1.01"
    with pytest.raises(InputError, match="currency") as err:
        round_money(D(1), "XXX")
    assert err.value.field == "currency"


def test_to_decimal_is_exact_when_it_terminates() -> None:
    assert to_decimal(Fraction(3, 8)) == D("0.375")
    assert to_decimal(Fraction(100)) == D(100)
    approx = to_decimal(Fraction(1, 3_600_000))
    assert str(approx).startswith("2.777777")
    assert len(approx.as_tuple().digits) == 50
