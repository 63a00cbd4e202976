"""Price a billable quantity under a meter's pricing model (flat, graduated, volume, package).

Quantities and amounts are exact `Fraction`s (see `kubemeter_operator.money`); nothing here
rounds.

- flat: billable × unitPrice.
- graduated: tier i covers the billable units in (upTo[i-1], upTo[i]] (the first tier starts
  at 0, the last is unbounded) and prices them at its unit price; the flat fee of every tier
  *reached* (billable above the tier's lower bound) is added. Billable 0 reaches no tier.
- volume: the first tier whose upTo >= billable (the unbounded last tier otherwise) prices all
  billable units, plus that tier's flat fee. Billable 0 is no charge at all (no tier is
  matched, so no flat fee either).
- package: ceil(billable / packageSize) × packagePrice; every started package is charged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.priceplan import Pricing, PricingModel, Tier
from kubemeter_operator.money import exact

Quantity = Fraction | Decimal | int


@dataclass(frozen=True)
class TierCharge:
    """What one tier charged."""

    index: int
    """Position of the tier in the plan (0-based)."""
    units: Fraction
    """Billing units this tier priced."""
    unit_price: Decimal
    flat_fee: Decimal
    """The tier's flat fee, charged because the tier was reached (0 when it has none)."""

    @property
    def units_amount(self) -> Fraction:
        return self.units * exact(self.unit_price)

    @property
    def amount(self) -> Fraction:
        """Units × unit price plus the flat fee, exact."""
        return self.units_amount + exact(self.flat_fee)


@dataclass(frozen=True)
class Priced:
    """The exact charge for a billable quantity, with its breakdown."""

    amount: Fraction
    tiers: tuple[TierCharge, ...] = ()
    packages: int | None = None
    """package pricing: the number of (started) packages charged."""


def _non_negative(billable: Quantity) -> Fraction:
    value = exact(billable)
    if value < 0:
        raise ValueError(f"billable quantity must not be negative, got {value}")
    return value


def price_flat(unit_price: Decimal, billable: Quantity) -> Priced:
    return Priced(amount=_non_negative(billable) * exact(unit_price))


def price_graduated(tiers: Sequence[Tier], billable: Quantity) -> Priced:
    """Each tier prices the units in its own range; reached tiers add their flat fee."""
    qty = _non_negative(billable)
    charges: list[TierCharge] = []
    lower = Fraction(0)
    for index, tier in enumerate(tiers):
        if qty <= lower:
            break
        upper = exact(tier.up_to) if tier.up_to is not None else None
        top = qty if upper is None else min(qty, upper)
        charges.append(TierCharge(index, top - lower, tier.unit_price, tier.flat_fee))
        if upper is None:
            break
        lower = upper
    return Priced(amount=sum((c.amount for c in charges), Fraction(0)), tiers=tuple(charges))


def volume_tier(tiers: Sequence[Tier], billable: Quantity) -> int:
    """Index of the tier that holds the whole billable quantity (upTo is inclusive)."""
    qty = _non_negative(billable)
    for index, tier in enumerate(tiers):
        if tier.up_to is None or qty <= exact(tier.up_to):
            return index
    # A valid plan's last tier is unbounded; be safe with unvalidated input.
    return len(tiers) - 1


def price_volume(tiers: Sequence[Tier], billable: Quantity) -> Priced:
    """The matched tier prices all billable units and adds its flat fee; 0 costs nothing."""
    qty = _non_negative(billable)
    if qty == 0 or not tiers:
        return Priced(amount=Fraction(0))
    index = volume_tier(tiers, qty)
    tier = tiers[index]
    charge = TierCharge(index, qty, tier.unit_price, tier.flat_fee)
    return Priced(amount=charge.amount, tiers=(charge,))


def packages_needed(package_size: Decimal, billable: Quantity) -> int:
    """Started packages: ceil(billable / size), exact."""
    size = exact(package_size)
    if size <= 0:
        raise ValueError("packageSize must be greater than 0")
    return math.ceil(_non_negative(billable) / size)


def price_package(package_size: Decimal, package_price: Decimal, billable: Quantity) -> Priced:
    count = packages_needed(package_size, billable)
    return Priced(amount=count * exact(package_price), packages=count)


def price(pricing: Pricing, billable: Quantity) -> Priced:
    """The exact charge for `billable` billing units under `pricing`."""
    p = pricing
    if p.model is PricingModel.FLAT and p.unit_price is not None:
        return price_flat(p.unit_price, billable)
    if p.model is PricingModel.GRADUATED and p.tiers:
        return price_graduated(p.tiers, billable)
    if p.model is PricingModel.VOLUME and p.tiers:
        return price_volume(p.tiers, billable)
    if p.model is PricingModel.PACKAGE and p.package_size and p.package_price is not None:
        return price_package(p.package_size, p.package_price, billable)
    # Unreachable for a validated Pricing (its validator requires these fields).
    raise ValueError(f"pricing: {p.model.value} pricing is missing its parameters")
