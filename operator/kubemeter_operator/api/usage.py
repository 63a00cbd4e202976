"""Usage records: one shape for `kubemeter quote` files, the events API and the metering loop.

Quantities are in base units: GPU time in integer milliseconds, tokens, steps and requests as
integers, custom quantities as exact decimals. Every record is bounded, so no sum, period or
stored column can overflow downstream:

- a count (`Count`) is at most `MAX_COUNT` = 10**15 per record;
- an instant (`Instant`: `timestamp`, `windowStart`, `windowEnd`) lies in the UTC years
  `FIRST_YEAR`..`LAST_YEAR` (1970..9998), so every period it falls in, and that period's end,
  is a representable `datetime`;
- usage from outside (validated with `context=INPUT`: the events API and usage files) also
  keeps custom quantities to 24 integer digits and 12 decimal places (`CUSTOM_DIGITS`).

JSON and YAML readers convert integer literals with `bounded_int`: one of more than
`MAX_INT_DIGITS` digits becomes an `OversizedInt` (never converted, so never the
`ValueError` of Python's 4300-digit limit, and never quadratic work), which every field
refuses with a message naming it. This module never reads files or sockets itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    model_validator,
)

from kubemeter_operator.api.types import MIG_PROFILE_PATTERN, ApiModel, Dec

MAX_COUNT: Final = 10**15
"""Largest count of one record. 9,223 records of this size still sum within a signed 64-bit
integer (2**63 - 1 is about 9.22 * 10**18), and 10**15 ms is about 31,000 years of one GPU:
no real record comes near it, and a ledger sum of many cannot overflow its BIGINT column."""

FIRST_YEAR: Final = 1970
"""Earliest UTC year of a usage instant (and of a billing period)."""
LAST_YEAR: Final = 9998
"""Latest UTC year of a usage instant: the period 9998-12 ends at 9999-01-01, while 9999-12
would end in the year 10000, which `datetime` cannot hold."""

CUSTOM_DIGITS: Final = (24, 12)
"""Most integer digits and decimal places of a custom quantity from outside: two integer
digits of headroom below the ledger's NUMERIC(38, 12), so sums of many still fit."""

MAX_INT_DIGITS: Final = 40
"""Longest integer literal (in decimal digits) that `bounded_int` converts. No field of the
kubemeter API takes a larger integer: a count has at most 16 digits, and a decimal is at most
40 characters in the CRDs (26 integer digits in the ledger)."""

INPUT: Final[dict[str, Any]] = {"kubemeter_input": True}
"""Validation context for usage that arrives from outside (the events API, usage files):
`USAGE_LIST.validate_python(data, context=INPUT)` also applies the input-only bounds. Records
built inside kubemeter (metering, stored payloads) are validated without it."""

_FIRST_INSTANT = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
_END_INSTANT = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC)


class OversizedInt:
    """An integer literal with more than `MAX_INT_DIGITS` digits, left unconverted.

    It is no `int`, so every typed field refuses it; its repr names only its length, so no
    error message tries to print thousands of digits."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"

    __str__ = __repr__


def bounded_int(text: str) -> int | OversizedInt:
    """`int(text)` for a JSON or YAML integer literal; an `OversizedInt` beyond
    `MAX_INT_DIGITS` digits (use as `json.loads(..., parse_int=bounded_int)`)."""
    digits = len(text) - text.startswith(("-", "+"))
    if digits > MAX_INT_DIGITS:
        return OversizedInt(digits)
    return int(text)


def _no_oversized(value: Any) -> Any:
    if isinstance(value, OversizedInt):
        raise ValueError(
            f"an integer of {value.digits} digits is too large (at most {MAX_COUNT} per record)"
        )
    return value


Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True), BeforeValidator(_no_oversized)]
"""A non-negative integer up to `MAX_COUNT`; strings, floats and booleans are refused."""


def _check_instant(value: datetime) -> datetime:
    if not _FIRST_INSTANT <= value < _END_INSTANT:
        raise ValueError(
            f"{value.isoformat()} is outside the years {FIRST_YEAR}..{LAST_YEAR} (UTC)"
        )
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_check_instant)]
"""An aware instant in the UTC years `FIRST_YEAR`..`LAST_YEAR`."""


def _integer_digits_and_places(value: Decimal) -> tuple[int, int]:
    """(integer digits, decimal places) of a finite decimal, trailing zeros not counted."""
    if not value:
        return 0, 0
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: parse_decimal refuses the rest
    zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    exponent += zeros
    return max(0, len(digits) - zeros + exponent), max(0, -exponent)


def _oversized_quantity(value: Any) -> Any:
    if isinstance(value, OversizedInt):
        raise ValueError(
            f"an integer of {value.digits} digits is too large "
            f"(at most {CUSTOM_DIGITS[0]} integer digits)"
        )
    return value


def _check_quantity(value: Decimal, info: ValidationInfo) -> Decimal:
    if not (info.context or {}).get("kubemeter_input"):
        return value
    most_digits, most_places = CUSTOM_DIGITS
    digits, places = _integer_digits_and_places(value)
    if digits > most_digits:
        raise ValueError(f"is too large ({digits} integer digits; at most {most_digits})")
    if places > most_places:
        raise ValueError(f"has more than {most_places} decimal places ({places})")
    return value


Quantity = Annotated[Dec, AfterValidator(_check_quantity), BeforeValidator(_oversized_quantity)]
"""A custom quantity: a non-negative exact decimal (a string on the wire)."""

EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$"


class _Usage(ApiModel):
    id: str | None = Field(default=None, pattern=EVENT_ID_PATTERN)
    """Event id: the idempotency key of the events API (required there)."""
    tenant: str | None = Field(default=None, max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    pod: str | None = Field(default=None, max_length=253)

    @property
    def at(self) -> datetime:
        """The instant that decides which period the record belongs to."""
        raise NotImplementedError


class GpuUsage(_Usage):
    """GPU time held (allocated) and used (active) over a window, in milliseconds."""

    kind: Literal["gpu"] = "gpu"
    model: str = Field(min_length=1, max_length=200)
    """GPU product name as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`."""
    mig_profile: str | None = Field(default=None, pattern=MIG_PROFILE_PATTERN)
    allocated_ms: Count
    active_ms: Count = 0
    window_start: Instant
    window_end: Instant

    @model_validator(mode="after")
    def _check(self) -> GpuUsage:
        if self.window_end <= self.window_start:
            raise ValueError("windowEnd: must be after windowStart")
        if self.active_ms > self.allocated_ms:
            raise ValueError("activeMs: cannot exceed allocatedMs")
        return self

    @property
    def at(self) -> datetime:
        return self.window_start


class TokenUsage(_Usage):
    """Tokens of one or more LLM requests. Cached prompt tokens are a subset of prompt tokens."""

    kind: Literal["tokens"] = "tokens"
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_prompt_tokens: Count = 0
    timestamp: Instant

    @model_validator(mode="after")
    def _check(self) -> TokenUsage:
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError("cachedPromptTokens: cannot exceed promptTokens")
        return self

    @property
    def at(self) -> datetime:
        return self.timestamp


class StepUsage(_Usage):
    kind: Literal["steps"] = "steps"
    model: str | None = Field(default=None, min_length=1, max_length=200)
    steps: Count
    timestamp: Instant

    @property
    def at(self) -> datetime:
        return self.timestamp


class RequestUsage(_Usage):
    kind: Literal["requests"] = "requests"
    model: str | None = Field(default=None, min_length=1, max_length=200)
    requests: Count
    timestamp: Instant

    @property
    def at(self) -> datetime:
        return self.timestamp


class CustomUsage(_Usage):
    kind: Literal["custom"] = "custom"
    name: str = Field(min_length=1, max_length=100)
    quantity: Quantity
    timestamp: Instant

    @property
    def at(self) -> datetime:
        return self.timestamp


UsageRecord = Annotated[
    GpuUsage | TokenUsage | StepUsage | RequestUsage | CustomUsage,
    Field(discriminator="kind"),
]

USAGE_LIST: TypeAdapter[list[UsageRecord]] = TypeAdapter(
    list[UsageRecord],
    config=ConfigDict(defer_build=True),  # built on first use
)
"""Validates a JSON list of usage records (a USAGE.json file or an events API batch)."""
