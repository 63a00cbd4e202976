"""Money: the currencies kubemeter prices in, their minor units, and exact half-up rounding.

The one place that knows currencies and rounding (rating, status, the ledger and the API
models all ask here). Pure, and at the bottom of the layers: it imports only `errors`.

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

from kubemeter_operator.errors import InputError

# ISO 4217 codes we support, with their minor units (digits after the decimal point).
CURRENCY_MINOR_UNITS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2,
    "CZK": 2, "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2,
    "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2,
    "NOK": 2, "NZD": 2, "OMR": 3, "PHP": 2, "PLN": 2, "SAR": 2, "SEK": 2, "SGD": 2,
    "THB": 2, "TND": 3, "TRY": 2, "TWD": 2, "UGX": 0, "USD": 2, "VND": 0, "ZAR": 2,
}  # fmt: skip
CURRENCIES = frozenset(CURRENCY_MINOR_UNITS)

DISPLAY_DIGITS = 50
"""Significant digits of a non-terminating exact value shown in a statement."""


def exact(value: Decimal | int | Fraction) -> Fraction:
    """The exact rational value of a Decimal or integer (never a float)."""
    if isinstance(value, float):  # pragma: no cover - guarded by the type checker
        raise TypeError("floats are inexact; use Decimal")
    return Fraction(value)


def minor_units(currency: str) -> int:
    """Digits after the decimal point in `currency` (USD 2, JPY 0, BHD 3); an unknown code
    is an InputError naming the `currency` field."""
    check_currency(currency)
    return CURRENCY_MINOR_UNITS[currency]


def check_currency(currency: str, field: str = "currency") -> str:
    """`currency` if it is a supported ISO 4217 code, else an InputError naming `field`."""
    if currency not in CURRENCY_MINOR_UNITS:
        raise InputError(field, f"{currency!r} is not a supported ISO 4217 currency code")
    return currency


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
