"""Usage totals: what rating consumes. Records reduce to sums per usage key.

The ledger keeps the same sums (per tenant, period and key) in SQL, so a period statement
never has to read every usage row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from decimal import MAX_PREC, Decimal, localcontext

from kubemeter_operator.api.usage import (
    CustomUsage,
    GpuUsage,
    RequestUsage,
    StepUsage,
    TokenUsage,
    UsageRecord,
)
from kubemeter_operator.usage.periods import Period, split_by_period


@dataclass(frozen=True, order=True)
class UsageKey:
    """What a usage quantity is *of*; meters select keys."""

    kind: str
    """"gpu", "tokens", "steps", "requests" or "custom"."""
    model: str = ""
    """GPU model (gpu) or LLM model (tokens, steps, requests); "" when none."""
    mig_profile: str = ""
    name: str = ""
    """Custom quantity name (custom)."""


@dataclass
class Quantities:
    """Summed base quantities for one usage key."""

    allocated_ms: int = 0
    active_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    steps: int = 0
    requests: int = 0
    custom: Decimal = Decimal(0)

    def add(self, other: Quantities) -> None:
        # Exact: the default decimal context (28 digits) would round a long custom sum.
        with localcontext() as ctx:
            ctx.prec = MAX_PREC
            for f in fields(self):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


UsageTotals = dict[UsageKey, Quantities]


def key_and_quantities(record: UsageRecord) -> tuple[UsageKey, Quantities]:
    """The usage key of a record and its base quantities."""
    if isinstance(record, GpuUsage):
        return (
            UsageKey("gpu", record.model, record.mig_profile or ""),
            Quantities(allocated_ms=record.allocated_ms, active_ms=record.active_ms),
        )
    if isinstance(record, TokenUsage):
        return (
            UsageKey("tokens", record.model),
            Quantities(
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cached_prompt_tokens=record.cached_prompt_tokens,
            ),
        )
    if isinstance(record, StepUsage):
        return UsageKey("steps", record.model or ""), Quantities(steps=record.steps)
    if isinstance(record, RequestUsage):
        return UsageKey("requests", record.model or ""), Quantities(requests=record.requests)
    if isinstance(record, CustomUsage):
        return UsageKey("custom", name=record.name), Quantities(custom=record.quantity)
    raise TypeError(f"unknown usage record {type(record).__name__}")  # pragma: no cover


def accumulate(records: Iterable[UsageRecord], period: Period) -> UsageTotals:
    """Sum the parts of `records` that fall into `period` (GPU windows split exactly)."""
    totals: UsageTotals = {}
    for record in records:
        for part_period, part in split_by_period(record):
            if part_period != period:
                continue
            key, qty = key_and_quantities(part)
            totals.setdefault(key, Quantities()).add(qty)
    return totals
