"""The statement of one tenant's period: pydantic models, JSON with decimals as strings.

Money fields are rounded half-up to the currency's minor unit. `amountExact` and the
billing-unit quantities are exact values for audit (a non-terminating value, such as 1 ms in
gpu-hours, is shown with 50 significant digits). The identities the tests hold:

- subtotal = platformFee + sum(line.amount)
- discount = round_half_up(subtotal × discountPercent / 100)
- adjustmentsTotal = sum(adjustment.amount) over the adjustments in the statement's currency
- total = subtotal − discount + adjustmentsTotal  (always the sum of rounded lines)
- cost = sum(line.cost) + sum(adjustment.cost), margin = total − cost

Adjustments carry late usage: usage of an earlier period that arrived after that period's
statement was finalised. Each is rated at the old period's terms, as the difference it
makes to that period (see `rating.adjustments`), and billed on the first open statement.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import AwareDatetime, Field

from kubemeter_operator.api.priceplan import BillingUnit, GpuBasis, MeterKind, PricingModel
from kubemeter_operator.api.types import ApiModel, Dec, Percent, SignedDec
from kubemeter_operator.usage.periods import Period


class TierLine(ApiModel):
    """What one tier of a graduated or volume meter charged."""

    tier: int = Field(ge=0)
    """Index of the tier in the plan (0-based)."""
    units: Dec
    """Billing units this tier priced."""
    unit_price: Dec
    amount: Dec
    """units × unitPrice, exact (the flat fee is separate)."""
    flat_fee: Dec
    """The tier's flat fee, charged because the tier was reached (graduated) or matched
    (volume)."""


class StatementLine(ApiModel):
    """One meter's charge for the period."""

    meter: str
    display_name: str | None = None
    kind: MeterKind
    unit: BillingUnit
    basis: GpuBasis | None = None
    """gpuTime meters: which milliseconds were counted."""
    pricing_model: PricingModel
    quantity: Dec
    """Usage in base units (GPU ms after any MIG share, tokens, steps, requests, custom)."""
    billed_quantity: Dec
    """Usage in the meter's billing unit (quantity / base units per billing unit)."""
    included: Dec
    """Billing units included per period."""
    billable: Dec
    """max(0, billedQuantity − included)."""
    tiers: list[TierLine] = Field(default_factory=list)
    packages: int | None = None
    """package pricing: packages charged (every started package)."""
    amount_exact: Dec
    """The charge before rounding."""
    amount: Dec
    """The charge rounded half-up to the currency's minor unit."""
    unit_cost: Dec | None = None
    cost: Dec | None = None
    """billedQuantity × unitCost, rounded (included units cost you too)."""


class UnpricedUsage(ApiModel):
    """Usage that no meter of the plan prices (reported, never dropped)."""

    kind: str
    model: str | None = None
    mig_profile: str | None = None
    name: str | None = None
    quantities: dict[str, Dec]
    """Base units by quantity name (allocatedMs, activeMs, promptTokens (uncached only),
    cachedPromptTokens, completionTokens, steps, requests, custom)."""
    reason: str


class AdjustmentLine(ApiModel):
    """What late usage adds to one meter of the old period."""

    meter: str
    quantity: SignedDec
    """Base units the late usage adds to the meter (after any MIG share)."""
    amount: SignedDec
    """The change of the meter's rounded charge (negative only under volume pricing)."""


class Adjustment(ApiModel):
    """Late usage of a finalised period, billed on a later statement at the old terms."""

    reason: str = "lateUsage"
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    """The (finalised) period the usage belongs to."""
    description: str
    """E.g. "late usage from 2026-10"."""
    currency: str
    """The old period's currency; an adjustment in another currency than the statement's
    is listed but not added to its total (kubemeter never converts)."""
    lines: list[AdjustmentLine] = Field(default_factory=list)
    platform_fee: SignedDec = Field(default_factory=lambda: Decimal(0))
    """Always 0: the old period's fee was charged on its own invoice."""
    discount: SignedDec
    """The change of the old period's discount (subtracted)."""
    amount: SignedDec
    """The change of the old period's total: sum(lines) − discount."""
    cost: SignedDec
    unpriced: list[UnpricedUsage] = Field(default_factory=list)
    """Late usage no meter of the old terms prices (reported, never dropped)."""


class Statement(ApiModel):
    """A rated period: every line rounded, the total the sum of the rounded lines."""

    currency: str
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    period_start: AwareDatetime
    period_end: AwareDatetime
    platform_fee: Dec
    lines: list[StatementLine] = Field(default_factory=list)
    subtotal: Dec
    discount_percent: Percent
    discount: Dec
    adjustments: list[Adjustment] = Field(default_factory=list)
    """Late usage of earlier, finalised periods billed on this statement."""
    adjustments_total: SignedDec = Field(default_factory=lambda: Decimal(0))
    total: SignedDec
    """subtotal − discount + adjustmentsTotal."""
    cost: Dec
    """Sum of the meters' costs (COGS)."""
    margin: SignedDec
    """total − cost; negative when you sell below cost."""
    unpriced: list[UnpricedUsage] = Field(default_factory=list)

    @property
    def billing_period(self) -> Period:
        return Period.parse(self.period)

    def line(self, meter: str) -> StatementLine:
        """The line of a meter, by name."""
        for line in self.lines:
            if line.meter == meter:
                return line
        raise KeyError(meter)

    def to_json(self, *, indent: int | None = 2) -> str:
        """JSON with camelCase keys and every decimal as a string."""
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=indent)
