"""Column types that keep money exact and instants in UTC on both SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

from kubemeter_operator.usage.canonical import plain as plain

SCALE = 12
"""Fractional digits kept for money and decimal quantities (Numeric(38, 12))."""
PRECISION = 38
_MAX_ABS = Decimal(10) ** (PRECISION - SCALE)


WIDE = Context(prec=80)
"""Arithmetic context for ledger sums: wider than any stored value, so never rounds."""


def exact_problem(value: Decimal) -> str | None:
    """Why `value` cannot be stored exactly (None when it can)."""
    if not value.is_finite():
        return "must be a finite decimal"
    exponent = Decimal(plain(value)).as_tuple().exponent
    if isinstance(exponent, int) and exponent < -SCALE:
        return f"has more than {SCALE} decimal places"
    if value.copy_abs() >= _MAX_ABS:
        return f"is too large (at most {PRECISION - SCALE} integer digits)"
    return None


class ExactDecimal(TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC(38, 12) on PostgreSQL, plain-notation TEXT on SQLite.

    Values come back normalised (no trailing fractional zeros) on both databases, so a
    round trip returns an equal Decimal with the same digits everywhere. Values that would
    lose digits are refused rather than rounded.
    """

    impl = Numeric(PRECISION, SCALE, asdecimal=True)  # numeric operators in SQL expressions
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(PRECISION, SCALE, asdecimal=True))
        return dialect.type_descriptor(String(48))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            if isinstance(value, (float, bool)):
                raise TypeError("money must be a Decimal, never a float")
            value = Decimal(value)
        problem = exact_problem(value)
        if problem:
            raise ValueError(f"{value}: {problem}")
        if dialect.name == "postgresql":
            return value
        return plain(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(plain(Decimal(value)))


class UtcTimestamp(TypeDecorator[datetime]):
    """An aware instant: timestamptz on PostgreSQL, fixed-width UTC ISO text on SQLite
    (so text order is time order)."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware datetimes")
        utc = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return utc
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
