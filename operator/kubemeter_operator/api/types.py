"""Shared field types for the kubemeter API: exact decimals, names, currencies.

Money and fractional quantities travel as decimal *strings* in the Kubernetes API and in
usage files, and are `Decimal` in Python. Floats are refused: a YAML `2.5` would already have
lost exactness by the time we saw it, and the API server's schema rejects it too.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
"""Non-negative decimal in plain notation, as the CRD schema accepts it."""

_DECIMAL_RE = re.compile(DECIMAL_PATTERN)

MIG_PROFILE_PATTERN = r"^([0-9]+)g\.[0-9]+gb(\+me)?$"
"""A MIG profile name (`1g.10gb`, `3g.40gb`, `1g.20gb+me`); group 1: its compute slices."""
MIG_PROFILE_RE = re.compile(MIG_PROFILE_PATTERN)

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def parse_decimal(value: Any) -> Decimal:
    """Parse a non-negative exact decimal from a string or integer; refuse floats."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError('must be a decimal string such as "12.50", not a boolean')
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        raise ValueError(
            f'must be a decimal string such as "{value}", not a float (floats are inexact)'
        )
    elif isinstance(value, str):
        if not _DECIMAL_RE.match(value):
            raise ValueError(
                f'{value!r} is not a non-negative decimal in plain notation (e.g. "12.50")'
            )
        try:
            result = Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards
            raise ValueError(f"{value!r} is not a decimal") from exc
    else:
        raise ValueError(f"must be a decimal string, got {type(value).__name__}")
    if not result.is_finite() or result < 0:
        raise ValueError(f"{value!r} must be a finite, non-negative decimal")
    return result


def format_decimal(value: Decimal) -> str:
    """Plain-notation string for a Decimal (never exponent form)."""
    text = format(value, "f")
    return text


Dec = Annotated[
    Decimal,
    BeforeValidator(parse_decimal),
    PlainSerializer(format_decimal, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN, "maxLength": 40}),
]
"""A non-negative exact decimal, a string on the wire."""


def _parse_percent(value: Any) -> Decimal:
    result = parse_decimal(value)
    if result > 100:
        raise ValueError(f"{format_decimal(result)} is above 100 percent")
    return result


Percent = Annotated[
    Decimal,
    BeforeValidator(_parse_percent),
    PlainSerializer(format_decimal, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)$",
            "maxLength": 40,
            "description": "A percentage between 0 and 100 as a decimal string.",
        }
    ),
]


def _parse_signed_decimal(value: Any) -> Decimal:
    if isinstance(value, str) and value.startswith("-"):
        return -parse_decimal(value[1:])
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return Decimal(value)
    if isinstance(value, Decimal) and value < 0 and value.is_finite():
        return value
    return parse_decimal(value)


SignedDec = Annotated[
    Decimal,
    BeforeValidator(_parse_signed_decimal),
    PlainSerializer(format_decimal, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "maxLength": 41}),
]
"""An exact decimal that may be negative (a margin, a balance change)."""


def to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # Attribute docstrings are field descriptions only in the CRDs (`crdgen`, which reads
        # them itself): parsing every model's source at import would slow each CLI start.
        # build each model's validator when first used, not at import: a CLI command that
        # reads a PricePlan does not pay for the 40 models it never touches
        defer_build=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The wire form: camelCase keys, decimals as strings, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
