"""Usage records: one shape for `kubemeter quote` files, the events API and the metering loop.

Quantities are in base units: GPU time in integer milliseconds, tokens, steps and requests as
integers, custom quantities as exact decimals.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, TypeAdapter, model_validator

from kubemeter_operator.api.types import ApiModel, Dec

Count = Annotated[int, Field(ge=0, strict=True)]
"""A non-negative integer; strings, floats and booleans are refused."""

EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$"

_MS = timedelta(milliseconds=1)


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
    mig_profile: str | None = Field(default=None, pattern=r"^[0-9]+g\.[0-9]+gb(\+me)?$")
    allocated_ms: Count
    active_ms: Count = 0
    window_start: AwareDatetime
    window_end: AwareDatetime

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

    @property
    def window_ms(self) -> int:
        return (self.window_end - self.window_start) // _MS


class TokenUsage(_Usage):
    """Tokens of one or more LLM requests. Cached prompt tokens are a subset of prompt tokens."""

    kind: Literal["tokens"] = "tokens"
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_prompt_tokens: Count = 0
    timestamp: AwareDatetime

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
    timestamp: AwareDatetime

    @property
    def at(self) -> datetime:
        return self.timestamp


class RequestUsage(_Usage):
    kind: Literal["requests"] = "requests"
    model: str | None = Field(default=None, min_length=1, max_length=200)
    requests: Count
    timestamp: AwareDatetime

    @property
    def at(self) -> datetime:
        return self.timestamp


class CustomUsage(_Usage):
    kind: Literal["custom"] = "custom"
    name: str = Field(min_length=1, max_length=100)
    quantity: Dec
    timestamp: AwareDatetime

    @property
    def at(self) -> datetime:
        return self.timestamp


UsageRecord = Annotated[
    GpuUsage | TokenUsage | StepUsage | RequestUsage | CustomUsage,
    Field(discriminator="kind"),
]

USAGE_LIST: TypeAdapter[list[UsageRecord]] = TypeAdapter(list[UsageRecord])
"""Validates a JSON list of usage records (a USAGE.json file or an events API batch)."""
