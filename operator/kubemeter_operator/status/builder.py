"""Build a Tenant's status from its statement and what the metering cycle observed. Pure.

The handler layer supplies the inputs (see `build_status`); `status_patch` then decides
whether anything needs writing, and `status_events` what to announce.

Phase: the budget decision's (`budget.decision`, made by the controller's budget step:
`Suspended` while GPU work is stopped or must be, `Warning` from the warning threshold or
with an empty wallet that does not enforce); without one (the tenant was not decided this
cycle) a suspension in force keeps `Suspended`, else the budget alone is decided. Then
`Warning` when a prepaid wallet is low or the price plan is missing (nothing can be
priced); `Active` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.conditions import Condition
from kubemeter_operator.api.priceplan import TOKEN_KINDS, MeterKind, PricePlanSpec
from kubemeter_operator.api.tenant import (
    BudgetStatus,
    EnforcementState,
    EnforcementStatus,
    MeterUsage,
    NotificationStatus,
    PeriodState,
    PeriodSummary,
    SuspendedWorkload,
    Tenant,
    TenantPhase,
    TenantStatus,
    TenantSummary,
    WalletStatus,
)
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.budget.decision import BudgetInputs, Decision, decide
from kubemeter_operator.budget.policy import budget_status
from kubemeter_operator.money import minor_units, round_half_up
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.status import conditions as cond
from kubemeter_operator.status.forecast import TotalSample, forecast
from kubemeter_operator.usage.periods import Period

MS_PER_HOUR = 3_600_000
_IN_FORCE = (EnforcementState.SUSPENDING, EnforcementState.SUSPENDED, EnforcementState.RESTORING)

STATUS_PLACES = 6
"""Decimal places of billing-unit quantities shown in Tenant status."""


def _display(value: Decimal) -> Decimal:
    return round_half_up(value, STATUS_PLACES).normalize() if value else Decimal(0)


def meter_usages(statement: Statement) -> list[MeterUsage]:
    """A statement's lines as the Tenant status `meters` list.

    `quantity` (base units) and `charge` are exact; the billing-unit figures are for
    reading and are rounded half-up to STATUS_PLACES decimal places (1 ms is a
    non-terminating fraction of a GPU-hour, and the CRD keeps decimals to 40 characters).
    """
    return [
        MeterUsage(
            name=line.meter,
            kind=line.kind,
            unit=line.unit,
            quantity=line.quantity,
            billed_quantity=_display(line.billed_quantity),
            included=_display(line.included),
            billable=_display(line.billable),
            charge=line.amount,
        )
        for line in statement.lines
    ]


def wallet_status(
    tenant: Tenant,
    balance: Decimal | None,
    previous: TenantStatus | None,
    shortfall: Decimal = Decimal(0),
) -> WalletStatus | None:
    wallet = tenant.spec.wallet
    if wallet is None or not wallet.enabled:
        return None
    if balance is None:  # ledger unavailable: keep what we showed
        return previous.wallet if previous is not None else None
    return WalletStatus(
        balance=balance,
        low=balance <= 0 or balance < wallet.low_balance_threshold,
        shortfall=max(shortfall, Decimal(0)),
    )


def summary(
    meters: Sequence[MeterUsage],
    *,
    total: Decimal | None,
    currency: str | None,
    budget: BudgetStatus | None,
) -> TenantSummary:
    gpu_ms = sum((m.quantity for m in meters if m.kind is MeterKind.GPU_TIME), Decimal(0))
    tokens = sum((m.quantity for m in meters if m.kind in TOKEN_KINDS), Decimal(0))
    return TenantSummary(
        gpu_hours=format_decimal(round_half_up(Fraction(gpu_ms) / MS_PER_HOUR, 2)),
        tokens=int(tokens),
        spend=f"{format_decimal(total)} {currency}" if total is not None and currency else "",
        budget_used=f"{format_decimal(budget.used_percent)}%" if budget is not None else "",
    )


def _phase(
    tenant: Tenant,
    period: Period,
    plan_found: bool,
    decision: Decision | None,
    enforcement: EnforcementStatus | None,
    budget: BudgetStatus | None,
    wallet: WalletStatus | None,
) -> TenantPhase:
    if decision is None and enforcement is not None and enforcement.state in _IN_FORCE:
        return TenantPhase.SUSPENDED  # not decided this cycle: the suspension stays
    if decision is None and budget is not None and tenant.spec.budget is not None:
        decision = decide(BudgetInputs(tenant.spec.budget, period, budget.used))
    if decision is not None and decision.phase is not TenantPhase.ACTIVE:
        return decision.phase
    if (wallet is not None and wallet.low) or not plan_found:
        return TenantPhase.WARNING
    return TenantPhase.ACTIVE


def _conditions(
    tenant: Tenant,
    *,
    plan_found: bool,
    have_statement: bool,
    degraded: Mapping[str, str],
    conflicts: Mapping[str, str],
    billing: Mapping[str, str],
    now: datetime,
    previous: Sequence[Condition] | None,
) -> list[Condition]:
    gen_raw = tenant.metadata.get("generation")
    gen = gen_raw if isinstance(gen_raw, int) else None
    plan_name = tenant.spec.price_plan_ref.name

    def c(type_: str, status: cond.Status, reason: str, message: str) -> Condition:
        return cond.condition(
            type_, status, reason, message, now=now, previous=previous, generation=gen
        )

    if not plan_found:
        ready = c(cond.READY, "False", "PricePlanNotFound", f"PricePlan {plan_name!r} not found")
    elif not have_statement:
        ready = c(cond.READY, "False", "StatementUnavailable", "the ledger could not be read")
    else:
        ready = c(cond.READY, "True", "Metered", "usage is metered and priced")
    plan = (
        c(cond.PRICE_PLAN_FOUND, "True", "Found", f"PricePlan {plan_name!r}")
        if plan_found
        else c(
            cond.PRICE_PLAN_FOUND,
            "False",
            "NotFound",
            f"PricePlan {plan_name!r} does not exist; usage is recorded but not priced",
        )
    )
    conflict = (
        c(
            cond.NAMESPACE_CONFLICT,
            "True",
            "NamespaceClaimedTwice",
            "namespaces also claimed by another tenant (not metered to either): "
            + cond.describe(conflicts),
        )
        if conflicts
        else c(cond.NAMESPACE_CONFLICT, "False", "NoConflict", "")
    )
    metering = (
        c(
            cond.METERING_DEGRADED,
            "True",
            "SourceUnavailable",
            "usage from these sources is delayed (it will be counted once they recover): "
            + cond.describe(degraded),
        )
        if degraded
        else c(cond.METERING_DEGRADED, "False", "AllSourcesHealthy", "")
    )
    currency = billing.get("currency", "")
    currency_cond = (
        c(cond.CURRENCY_MISMATCH, "True", "CurrencyChanged", currency)
        if currency
        else c(cond.CURRENCY_MISMATCH, "False", "SameCurrency", "")
    )
    blocked = billing.get("close", "")
    close_cond = (
        c(cond.PERIOD_CLOSE_BLOCKED, "True", "CannotFinalise", blocked)
        if blocked
        else c(cond.PERIOD_CLOSE_BLOCKED, "False", "Finalising", "")
    )
    untrusted = billing.get("untrusted", "")
    untrusted_cond = (
        c(cond.UNTRUSTED_USAGE, "True", "SeriesIgnored", untrusted)
        if untrusted
        else c(cond.UNTRUSTED_USAGE, "False", "AllSeriesTrusted", "")
    )
    token = billing.get("token", "")
    if tenant.spec.api_token_secret_ref is None:
        token_cond = c(cond.API_TOKEN_VALID, "Unknown", "NoTokenSecret", "no apiTokenSecretRef")
    elif token:
        token_cond = c(cond.API_TOKEN_VALID, "False", "TokenRefused", token)
    else:
        token_cond = c(cond.API_TOKEN_VALID, "True", "TokenAccepted", "")
    blocked_by = billing.get("enforcement", "")
    enforcement_cond = (
        c(cond.ENFORCEMENT_BLOCKED, "True", "ChangeFailed", blocked_by)
        if blocked_by
        else c(cond.ENFORCEMENT_BLOCKED, "False", "Enforcing", "")
    )
    return [ready, plan, conflict, metering, currency_cond, close_cond, untrusted_cond, token_cond,
            enforcement_cond]  # fmt: skip


def build_status(
    tenant: Tenant,
    plan: PricePlanSpec | None,
    statement: Statement | None,
    *,
    now: datetime,
    period: Period,
    wallet_balance: Decimal | None = None,
    recent_totals: Sequence[TotalSample] = (),
    degraded: Mapping[str, str] | None = None,
    conflicts: Mapping[str, str] | None = None,
    last_metered_time: datetime | None = None,
    previous: TenantStatus | None = None,
    suspended_workloads: Sequence[SuspendedWorkload] | None = None,
    previous_statement: Statement | None = None,
    previous_final: bool = False,
    wallet_shortfall: Decimal = Decimal(0),
    billing_problems: Mapping[str, str] | None = None,
    decision: Decision | None = None,
    enforcement: EnforcementStatus | None = None,
    notification: NotificationStatus | None = None,
) -> TenantStatus:
    """The Tenant's status for `period` as of `now`.

    - `plan`: the referenced PricePlan's spec, None when it does not exist.
    - `statement`: the running statement of `period` (the ledger's `running_statement`),
      None when it could not be produced (no plan, ledger down): the money fields of
      `previous` are then kept if they are of the same period.
    - `wallet_balance`: the prepaid balance (`ledger.balance`), None if unknown.
    - `recent_totals`: running totals seen at earlier cycles of this period (for the
      forecast's recent burn rate; see `status.forecast`).
    - `degraded`: metering source -> why it is unavailable.
    - `conflicts`: namespace -> the other tenant(s) claiming it.
    - `previous`: the current status (defaults to `tenant.status`): keeps condition
      transition times, the suspended workloads and, when needed, stale money fields.
    - `suspended_workloads`: what enforcement has suspended (default: keep `previous`').
    - `previous_statement`, `previous_final`: the previous period's statement, running while
      it closes, final once it is (shown as `previousPeriod`).
    - `wallet_shortfall`: prepaid charges the balance could not cover.
    - `billing_problems`: "currency" / "close" / "untrusted" / "token" / "enforcement" ->
      why (the CurrencyMismatch, PeriodCloseBlocked, UntrustedUsage, ApiTokenValid and
      EnforcementBlocked conditions).
    - `decision`: this cycle's budget decision (`budget.decision`; it sets the phase), None
      when the tenant was not decided (no statement): the phase then keeps a suspension in
      force.
    - `enforcement`, `notification`: the latest enforcement and webhook delivery (default:
      keep `previous`').
    """
    if previous is None:
        previous = tenant.status
    if statement is not None and statement.period != str(period):
        raise ValueError(f"statement is for {statement.period}, not {period}")
    same_period = previous is not None and previous.period == str(period)
    source: Statement | TenantStatus | None = statement
    if statement is None and same_period:
        source = previous

    meters: list[MeterUsage] = []
    currency = plan.currency if plan is not None else None
    status = TenantStatus(
        period=str(period),
        period_start=period.start,
        period_end=period.end,
        last_metered_time=last_metered_time
        or (previous.last_metered_time if previous is not None else None),
    )
    if isinstance(source, Statement):
        meters = meter_usages(source)
        currency = source.currency
        status.platform_fee = source.platform_fee
        status.subtotal = source.subtotal
        status.discount = source.discount
        status.total = source.total
        if source.adjustments:
            status.adjustments = source.adjustments_total
        if any(line.cost is not None for line in source.lines):
            status.cost = source.cost
            status.margin = source.margin
    elif isinstance(source, TenantStatus):
        meters = list(source.meters)
        currency = source.currency or currency
        for name in ("platform_fee", "subtotal", "discount", "adjustments", "total", "cost",
                     "margin"):  # fmt: skip
            setattr(status, name, getattr(source, name))
    status.meters = meters
    status.currency = currency

    if previous_statement is not None:
        status.previous_period = PeriodSummary(
            period=previous_statement.period,
            state=PeriodState.FINAL if previous_final else PeriodState.CLOSING,
            currency=previous_statement.currency,
            total=previous_statement.total,
        )
    spent = max(status.total, Decimal(0)) if status.total is not None else None
    if tenant.spec.budget is not None and spent is not None:
        status.budget = budget_status(tenant.spec.budget, spent)
    status.wallet = wallet_status(tenant, wallet_balance, previous, wallet_shortfall)

    if spent is not None and currency is not None:
        fee = status.platform_fee or Decimal(0)
        discount_pct = (
            statement.discount_percent if statement is not None else tenant.spec.discount_percent
        )
        fixed = round_half_up(Fraction(fee) * (100 - Fraction(discount_pct)) / 100, 8)
        status.forecast = forecast(
            now=now,
            period=period,
            total=spent,
            fixed=fixed,
            places=minor_units(currency),
            budget_limit=tenant.spec.budget.limit if tenant.spec.budget is not None else None,
            samples=recent_totals,
            previous=previous.forecast if same_period and previous is not None else None,
        )

    if suspended_workloads is not None:
        status.suspended_workloads = list(suspended_workloads)
    elif previous is not None:
        status.suspended_workloads = list(previous.suspended_workloads)
    status.enforcement = enforcement or (previous.enforcement if previous is not None else None)
    status.notification = notification or (previous.notification if previous is not None else None)

    status.conditions = _conditions(
        tenant,
        plan_found=plan is not None,
        have_statement=statement is not None,
        degraded=degraded or {},
        conflicts=conflicts or {},
        billing=billing_problems or {},
        now=now,
        previous=previous.conditions if previous is not None else None,
    )
    status.phase = _phase(
        tenant, period, plan is not None, decision, status.enforcement, status.budget,
        status.wallet,
    )  # fmt: skip
    generation = tenant.metadata.get("generation")
    status.observed_generation = generation if isinstance(generation, int) else None
    status.summary = summary(meters, total=status.total, currency=currency, budget=status.budget)
    return status
