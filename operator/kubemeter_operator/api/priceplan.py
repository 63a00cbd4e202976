"""The PricePlan custom resource: what each unit of usage costs.

These models are the single source of truth: `crds/priceplans.kubemeter.dev.yaml` is
generated from them (`kubemeter crds`), including the CEL rules declared here, so the API
server rejects what `PricePlan.model_validate` rejects.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from kubemeter_operator.api.conditions import Condition
from kubemeter_operator.api.types import (
    DNS_LABEL_PATTERN,
    MIG_PROFILE_PATTERN,
    ApiModel,
    Dec,
)
from kubemeter_operator.money import CURRENCIES

GROUP = "kubemeter.dev"
VERSION = "v1alpha1"

MAX_TIERS = 12
MAX_METERS = 32


class MeterKind(StrEnum):
    """What a meter counts."""

    GPU_TIME = "gpuTime"
    PROMPT_TOKENS = "promptTokens"
    COMPLETION_TOKENS = "completionTokens"
    CACHED_PROMPT_TOKENS = "cachedPromptTokens"
    AGENT_STEPS = "agentSteps"
    REQUESTS = "requests"
    CUSTOM = "custom"


TOKEN_KINDS = frozenset(
    {MeterKind.PROMPT_TOKENS, MeterKind.COMPLETION_TOKENS, MeterKind.CACHED_PROMPT_TOKENS}
)
MODEL_KINDS = TOKEN_KINDS | {MeterKind.AGENT_STEPS, MeterKind.REQUESTS}


class BillingUnit(StrEnum):
    """The unit a meter's prices and included quantity are expressed in."""

    GPU_HOUR = "gpu-hour"
    GPU_MINUTE = "gpu-minute"
    GPU_SECOND = "gpu-second"
    TOKEN = "token"
    TOKENS_1K = "1k-tokens"
    TOKENS_1M = "1m-tokens"
    STEP = "step"
    STEPS_1K = "1k-steps"
    REQUEST = "request"
    REQUESTS_1K = "1k-requests"
    UNIT = "unit"


UNIT_BASE: dict[BillingUnit, int] = {
    BillingUnit.GPU_HOUR: 3_600_000,
    BillingUnit.GPU_MINUTE: 60_000,
    BillingUnit.GPU_SECOND: 1_000,
    BillingUnit.TOKEN: 1,
    BillingUnit.TOKENS_1K: 1_000,
    BillingUnit.TOKENS_1M: 1_000_000,
    BillingUnit.STEP: 1,
    BillingUnit.STEPS_1K: 1_000,
    BillingUnit.REQUEST: 1,
    BillingUnit.REQUESTS_1K: 1_000,
    BillingUnit.UNIT: 1,
}
"""Base units (milliseconds, tokens, steps, requests, custom units) per billing unit."""

_TOKEN_UNITS = (BillingUnit.TOKEN, BillingUnit.TOKENS_1K, BillingUnit.TOKENS_1M)
UNITS_BY_KIND: dict[MeterKind, tuple[BillingUnit, ...]] = {
    MeterKind.GPU_TIME: (BillingUnit.GPU_HOUR, BillingUnit.GPU_MINUTE, BillingUnit.GPU_SECOND),
    MeterKind.PROMPT_TOKENS: _TOKEN_UNITS,
    MeterKind.COMPLETION_TOKENS: _TOKEN_UNITS,
    MeterKind.CACHED_PROMPT_TOKENS: _TOKEN_UNITS,
    MeterKind.AGENT_STEPS: (BillingUnit.STEP, BillingUnit.STEPS_1K),
    MeterKind.REQUESTS: (BillingUnit.REQUEST, BillingUnit.REQUESTS_1K),
    MeterKind.CUSTOM: (BillingUnit.UNIT,),
}


class GpuBasis(StrEnum):
    """`allocated`: wall time a pod held a GPU. `active`: that time weighted by SM activity."""

    ALLOCATED = "allocated"
    ACTIVE = "active"


class PricingModel(StrEnum):
    FLAT = "flat"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"


def _increasing_tiers_rule() -> str:
    """CEL: bounded tiers have strictly increasing `upTo` (unrolled: CEL has no ranges)."""
    clauses = [
        f"size(self) <= {i + 2} || (has(self[{i}].upTo) && has(self[{i + 1}].upTo) && "
        f"double(self[{i}].upTo) < double(self[{i + 1}].upTo))"
        for i in range(MAX_TIERS - 2)
    ]
    return " && ".join(f"({c})" for c in clauses)


class Tier(ApiModel):
    """One price tier. A tier covers the billable units above the previous tier's `upTo`."""

    up_to: Dec | None = None
    """Upper bound (inclusive) in billing units; omitted on the last, unbounded tier."""
    unit_price: Dec
    """Price per billing unit within this tier."""
    flat_fee: Dec = Decimal(0)
    """Fee charged once when usage reaches this tier (graduated) or lands in it (volume)."""


Tiers = Annotated[
    list[Tier],
    Field(
        min_length=1,
        max_length=MAX_TIERS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self[size(self) - 1].upTo) && "
                    "size(self.filter(t, !has(t.upTo))) == 1",
                    "message": "only the last tier may be unbounded, and it must be "
                    "(omit upTo on the last tier only)",
                },
                {
                    "rule": _increasing_tiers_rule(),
                    "message": "tier upTo bounds must be strictly increasing",
                },
                {
                    "rule": "!has(self[0].upTo) || double(self[0].upTo) > 0.0",
                    "message": "the first tier's upTo must be greater than 0",
                },
            ]
        },
    ),
]


class Pricing(ApiModel):
    """How billable units become money."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.model != 'flat' || has(self.unitPrice)",
                    "message": "flat pricing needs unitPrice",
                    "fieldPath": ".unitPrice",
                },
                {
                    "rule": "!(self.model in ['graduated', 'volume']) || has(self.tiers)",
                    "message": "graduated and volume pricing need tiers",
                    "fieldPath": ".tiers",
                },
                {
                    "rule": "self.model in ['graduated', 'volume'] || !has(self.tiers)",
                    "message": "tiers are only allowed with graduated or volume pricing",
                    "fieldPath": ".tiers",
                },
                {
                    "rule": "self.model != 'package' || "
                    "(has(self.packageSize) && has(self.packagePrice))",
                    "message": "package pricing needs packageSize and packagePrice",
                    "fieldPath": ".packageSize",
                },
                {
                    "rule": "!has(self.packageSize) || double(self.packageSize) > 0.0",
                    "message": "packageSize must be greater than 0",
                    "fieldPath": ".packageSize",
                },
                {
                    "rule": "self.model == 'flat' || !has(self.unitPrice)",
                    "message": "unitPrice is only allowed with flat pricing",
                    "fieldPath": ".unitPrice",
                },
            ]
        }
    }

    model: PricingModel
    """flat, graduated (each tier prices its slice), volume (one tier prices all), package."""
    unit_price: Dec | None = None
    """flat: price per billing unit."""
    tiers: Tiers | None = None
    """graduated and volume: tiers in increasing order, the last one unbounded."""
    package_size: Dec | None = None
    """package: billing units per package; every started package is charged."""
    package_price: Dec | None = None
    """package: price per started package."""

    @model_validator(mode="after")
    def _check(self) -> Pricing:
        m = self.model
        if m is PricingModel.FLAT and self.unit_price is None:
            raise ValueError("unitPrice: flat pricing needs unitPrice")
        if m is not PricingModel.FLAT and self.unit_price is not None:
            raise ValueError("unitPrice: only allowed with flat pricing")
        if m in (PricingModel.GRADUATED, PricingModel.VOLUME):
            if not self.tiers:
                raise ValueError("tiers: graduated and volume pricing need tiers")
            _check_tiers(self.tiers)
        elif self.tiers is not None:
            raise ValueError("tiers: only allowed with graduated or volume pricing")
        if m is PricingModel.PACKAGE and (self.package_size is None or self.package_price is None):
            raise ValueError("packageSize: package pricing needs packageSize and packagePrice")
        if self.package_size is not None and self.package_size <= 0:
            raise ValueError("packageSize: must be greater than 0")
        return self


def _check_tiers(tiers: list[Tier]) -> None:
    *bounded, last = tiers
    if last.up_to is not None:
        raise ValueError("tiers: the last tier must be unbounded (omit its upTo)")
    previous = Decimal(0)
    for i, tier in enumerate(bounded):
        if tier.up_to is None:
            raise ValueError(f"tiers[{i}].upTo: only the last tier may be unbounded")
        if tier.up_to <= previous:
            raise ValueError(
                f"tiers[{i}].upTo: bounds must be strictly increasing and above 0 "
                f"({tier.up_to} <= {previous})"
            )
        previous = tier.up_to


class PrometheusSource(ApiModel):
    """Where the operator reads a token or request counter from Prometheus."""

    metric: str = Field(max_length=200, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    """A counter metric name, e.g. `vllm:prompt_tokens_total`."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)
    """Exact label matchers added to the query."""
    model_label: str = Field(default="model_name", max_length=100)
    """The label that carries the model name (vLLM: `model_name`)."""


def _unit_rule() -> str:
    parts = []
    for kind, units in UNITS_BY_KIND.items():
        listed = ", ".join(f"'{u.value}'" for u in units)
        parts.append(f"(self.kind == '{kind.value}' && self.unit in [{listed}])")
    return " || ".join(parts)


def _quoted(kinds: frozenset[MeterKind]) -> str:
    return ", ".join(f"'{k.value}'" for k in sorted(kinds))


class Meter(ApiModel):
    """One priced line: what it counts, its unit, what is included, and its pricing."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": _unit_rule(),
                    "message": "unit does not fit the meter kind (gpuTime: gpu-hour, "
                    "gpu-minute, gpu-second; tokens: token, 1k-tokens, 1m-tokens; agentSteps: "
                    "step, 1k-steps; requests: request, 1k-requests; custom: unit)",
                    "fieldPath": ".unit",
                },
                {
                    "rule": "self.kind == 'gpuTime' || "
                    "(!has(self.gpuModel) && !has(self.migProfile) && !has(self.basis))",
                    "message": "gpuModel, migProfile and basis are only allowed on gpuTime meters",
                    "fieldPath": ".kind",
                },
                {
                    "rule": f"self.kind in [{_quoted(MODEL_KINDS)}] || !has(self.model)",
                    "message": "model is only allowed on token, agentSteps and requests meters",
                    "fieldPath": ".model",
                },
                {
                    "rule": "(self.kind == 'custom') == has(self.customName)",
                    "message": "customName is required on custom meters and only allowed there",
                    "fieldPath": ".customName",
                },
                {
                    "rule": f"self.kind in [{_quoted(TOKEN_KINDS | {MeterKind.REQUESTS})}] "
                    "|| !has(self.source)",
                    "message": "source is only allowed on token and requests meters",
                    "fieldPath": ".source",
                },
            ]
        }
    }

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    """Meter name, unique within the plan (a DNS label)."""
    display_name: str | None = Field(default=None, max_length=200)
    kind: MeterKind
    unit: BillingUnit
    gpu_model: str | None = Field(default=None, min_length=1, max_length=200)
    """gpuTime: the GPU product name as NVML reports it (e.g. `NVIDIA H100 80GB HBM3`);
    omitted matches any model."""
    mig_profile: str | None = Field(default=None, max_length=40, pattern=MIG_PROFILE_PATTERN)
    """gpuTime: price this MIG profile (e.g. `1g.10gb`) separately. Without such a meter a MIG
    slice counts on the GPU-model meter as its share of the GPU."""
    basis: GpuBasis | None = None
    """gpuTime: `allocated` (default) or `active`."""
    model: str | None = Field(default=None, min_length=1, max_length=200)
    """Token, step and request meters: the LLM model name; omitted matches any model."""
    custom_name: str | None = Field(default=None, min_length=1, max_length=100)
    """custom: the name of the custom quantity this meter prices."""
    source: PrometheusSource | None = None
    """Token and request meters: read the counter from Prometheus (defaults: vLLM)."""
    included: Dec = Decimal(0)
    """Billing units included per period at no charge."""
    pricing: Pricing
    unit_cost: Dec | None = None
    """Your cost (COGS) per billing unit, for margin reporting."""

    @model_validator(mode="after")
    def _check(self) -> Meter:
        if self.unit not in UNITS_BY_KIND[self.kind]:
            allowed = ", ".join(u.value for u in UNITS_BY_KIND[self.kind])
            raise ValueError(
                f"unit: {self.unit.value!r} does not fit kind {self.kind.value!r} "
                f"(allowed: {allowed})"
            )
        gpu_only = {"gpuModel": self.gpu_model, "migProfile": self.mig_profile, "basis": self.basis}
        if self.kind is not MeterKind.GPU_TIME:
            for field, value in gpu_only.items():
                if value is not None:
                    raise ValueError(f"{field}: only allowed on gpuTime meters")
        if self.model is not None and self.kind not in MODEL_KINDS:
            raise ValueError("model: only allowed on token, agentSteps and requests meters")
        if (self.kind is MeterKind.CUSTOM) != (self.custom_name is not None):
            raise ValueError("customName: required on custom meters and only allowed there")
        if self.source is not None and self.kind not in TOKEN_KINDS | {MeterKind.REQUESTS}:
            raise ValueError("source: only allowed on token and requests meters")
        return self

    @property
    def effective_basis(self) -> GpuBasis:
        return self.basis or GpuBasis.ALLOCATED

    @property
    def base_per_unit(self) -> int:
        """Base units (ms, tokens, ...) in one billing unit."""
        return UNIT_BASE[self.unit]

    def selector(self) -> tuple[str, ...]:
        """What this meter selects; two meters with the same selector would bill twice."""
        if self.kind is MeterKind.GPU_TIME:
            return (self.kind.value, self.gpu_model or "*", self.mig_profile or "*")
        if self.kind is MeterKind.CUSTOM:
            return (self.kind.value, self.custom_name or "")
        return (self.kind.value, self.model or "*")


Currency = Annotated[
    str,
    Field(
        min_length=3,
        max_length=3,
        json_schema_extra={"enum": sorted(CURRENCIES)},
    ),
]


def _unique_selector_rule() -> str:
    def opt(field: str, var: str) -> str:
        return f"(has({var}.{field}) ? {var}.{field} : '')"

    fields = ("gpuModel", "migProfile", "model", "customName")
    same = " && ".join(f"{opt(f, 'o')} == {opt(f, 'm')}" for f in fields)
    return f"self.all(m, size(self.filter(o, o.kind == m.kind && {same})) == 1)"


class PricePlanSpec(ApiModel):
    display_name: str | None = Field(default=None, max_length=200)
    currency: Currency
    """ISO 4217 currency code; amounts round half-up to its minor unit."""
    billing_period: Literal["calendarMonth"] = "calendarMonth"
    """Billing period: calendar months in UTC."""
    platform_fee: Dec = Decimal(0)
    """A fixed fee per period."""
    meters: list[Meter] = Field(
        default_factory=list,
        max_length=MAX_METERS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {
                    "rule": _unique_selector_rule(),
                    "message": "two meters select the same usage (same kind and the same "
                    "gpuModel/migProfile/model/customName); usage would be billed twice",
                }
            ],
        },
    )

    @model_validator(mode="after")
    def _check(self) -> PricePlanSpec:
        if self.currency not in CURRENCIES:
            raise ValueError(f"currency: {self.currency!r} is not a supported ISO 4217 code")
        names: set[str] = set()
        selectors: dict[tuple[str, ...], str] = {}
        for i, meter in enumerate(self.meters):
            if meter.name in names:
                raise ValueError(f"meters[{i}].name: duplicate meter name {meter.name!r}")
            names.add(meter.name)
            sel = meter.selector()
            if sel in selectors:
                raise ValueError(
                    f"meters[{i}]: selects the same usage as meter {selectors[sel]!r}; "
                    "usage would be billed twice"
                )
            selectors[sel] = meter.name
        return self


class PricePlanStatus(ApiModel):
    meter_count: int | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class PricePlan(ApiModel):
    """A PricePlan object as stored in the API server."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["kubemeter.dev/v1alpha1"] = "kubemeter.dev/v1alpha1"
    kind: Literal["PricePlan"] = "PricePlan"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PricePlanSpec
    status: PricePlanStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
