"""Exact money arithmetic: currency minor units and half-up rounding.

Rating computes every amount exactly as a rational number (`fractions.Fraction` built from
`Decimal` inputs: no float ever takes part), and only then rounds it half-up to the
currency's minor unit. A decimal context's precision can therefore never change money
silently: the only inexact conversion is `to_decimal` of a non-terminating value, which is
used for *display* fields (a quantity in gpu-hours, an exact amount) and never for money.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

from kubemeter_operator.api.types import CURRENCY_MINOR_UNITS

DISPLAY_DIGITS = 50
"""Significant digits of a non-terminating exact value shown in a statement."""

Exact = Fraction
"""An exact rational value (money before rounding, quantities in billing units)."""


def exact(value: Decimal | int | Fraction) -> Fraction:
    """The exact rational value of a Decimal or integer (never a float)."""
    if isinstance(value, float):  # pragma: no cover - guarded by the type checker
        raise TypeError("floats are inexact; use Decimal")
    return Fraction(value)


def minor_units(currency: str) -> int:
    """Digits after the decimal point in `currency` (USD 2, JPY 0, BHD 3)."""
    try:
        return CURRENCY_MINOR_UNITS[currency]
    except KeyError:
        raise ValueError(f"currency: {currency!r} is not a supported ISO 4217 code") from None


def _from_scaled(n: int, places: int) -> Decimal:
    """`n × 10^-places` as a Decimal with exactly `places` digits after the point (exact)."""
    return Decimal(f"{n}E-{places}") if places else Decimal(n)


def round_half_up(value: Decimal | int | Fraction, places: int) -> Decimal:
    """Round exactly, half away from zero, to `places` decimal places (0.125 -> 0.13)."""
    x = exact(value) * 10**places
    half = Fraction(1, 2)
    n = math.floor(x + half) if x >= 0 else -math.floor(-x + half)
    return _from_scaled(n, places)


def round_money(value: Decimal | int | Fraction, currency: str) -> Decimal:
    """Round an amount half-up to the minor unit of `currency`."""
    return round_half_up(value, minor_units(currency))


def to_decimal(value: Fraction) -> Decimal:
    """A Fraction as a Decimal: exact when it terminates, else 50 significant digits.

    Used for display fields only; money is always rounded from the exact Fraction.
    """
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den == 1:
        places = max(twos, fives)
        return _from_scaled(int(value * 10**places), places)
    with localcontext() as ctx:
        ctx.prec = DISPLAY_DIGITS
        ctx.rounding = ROUND_HALF_UP
        return Decimal(value.numerator) / Decimal(value.denominator)
