"""The bill step of a cycle: terms, period close, wallets, and the statements status shows.

    report = Biller(ledger).run(now, tenants, plans, metered_until)

In this order:

1. **Terms.** Each Tenant's PricePlan and discount are recorded for the current period
   (only when they changed). The latest terms apply to the whole open period; a finalised
   period's terms never change (`billing.statements`). A plan whose currency differs from
   the terms already recorded for the open period is *not* recorded: the period keeps its
   currency and the Tenant gets a `CurrencyMismatch` condition; the new plan applies from
   the next period (kubemeter never converts money).
2. **Close.** Every due period in the ledger is finalised once (`billing.close`), also for
   Tenants that were deleted meanwhile (with the terms they had).
3. **Per Tenant:** the running statement of the current period, the previous period's
   statement (running while it is still closing, final once it is), and for prepaid
   tenants the wallet settled per period (`billing.wallet`).

Blocking (it talks to the ledger): the controller runs it in a worker thread. One tenant's
failure never stops another's; a ledger outage (TransientError) is reported per tenant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.billing.close import DEFAULT_GRACE, Closed, close_due
from kubemeter_operator.billing.statements import final_statement, running_statement
from kubemeter_operator.billing.wallet import Due, WalletReport, settle_wallet
from kubemeter_operator.errors import ConflictError, InputError, KubemeterError, TransientError
from kubemeter_operator.ledger import Ledger, Terms
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage import UNASSIGNED, Period

log = logging.getLogger(__name__)


@dataclass
class TenantBill:
    """What billing knows of one Tenant after this cycle."""

    tenant: str
    period: Period
    statement: Statement | None = None
    """The running statement of `period` (None: no plan or terms, or the ledger is down)."""
    previous: Statement | None = None
    """The previous period's statement: running while it is closing, final once it is."""
    previous_final: bool = False
    wallet: WalletReport | None = None
    currency_problem: str = ""
    """Why the plan's (or the wallet's) currency cannot be used for this period."""
    close_problem: str = ""
    """Why a due period of this tenant cannot be finalised."""
    ledger_error: str = ""
    """The ledger could not be read or written (TransientError): figures are stale."""


@dataclass
class BillingReport:
    tenants: dict[str, TenantBill] = field(default_factory=dict)
    closed: list[Closed] = field(default_factory=list)
    """Periods finalised (or found final) this cycle."""
    error: str = ""
    """The close step failed as a whole (ledger unavailable)."""


def _prepaid(tenant: Tenant | None) -> bool:
    wallet = tenant.spec.wallet if tenant is not None else None
    return wallet is not None and wallet.enabled


class Biller:
    """Runs the bill step; keeps which terms it recorded, to write them only on change."""

    def __init__(self, ledger: Ledger, *, grace: timedelta = DEFAULT_GRACE) -> None:
        self.ledger = ledger
        self.grace = grace
        self._terms: dict[tuple[str, str], tuple[str, str]] = {}
        self._finals: dict[tuple[str, Period], Statement] = {}
        """Final statements already read (they never change)."""

    def forget(self, tenant: str) -> None:
        for key in [k for k in self._terms if k[0] == tenant]:
            del self._terms[key]
        for final in [k for k in self._finals if k[0] == tenant]:
            del self._finals[final]

    def run(
        self,
        now: datetime,
        tenants: Mapping[str, Tenant],
        plans: Mapping[str, PricePlan],
        metered_until: datetime | None,
    ) -> BillingReport:
        period = Period.of(now)
        report = BillingReport()
        for name, tenant in sorted(tenants.items()):
            bill = report.tenants[name] = TenantBill(name, period)
            plan = plans.get(tenant.spec.price_plan_ref.name)
            if plan is None:
                continue
            try:
                bill.currency_problem = self._record_terms(tenant, plan, period)
            except KubemeterError as exc:
                bill.ledger_error = str(exc)
        terms_for = {
            name: Terms(plans[t.spec.price_plan_ref.name].spec, t.spec.discount_percent)
            for name, t in tenants.items()
            if t.spec.price_plan_ref.name in plans
        }
        try:
            closing = close_due(
                self.ledger,
                metered_until,
                grace=self.grace,
                prepaid=lambda t: _prepaid(tenants.get(t)),
                terms_for=terms_for,
                skip=lambda t: t == UNASSIGNED,
            )
        except TransientError as exc:
            log.warning("billing: periods not closed this cycle: %s", exc)
            report.error = str(exc)
        else:
            report.closed = closing.closed
            for name, problem in closing.blocked.items():
                if name in report.tenants:
                    report.tenants[name].close_problem = problem
            for closed in closing.closed:
                if closed.wallet_error and closed.tenant in report.tenants:
                    report.tenants[closed.tenant].currency_problem = closed.wallet_error
        for name, tenant in sorted(tenants.items()):
            bill = report.tenants[name]
            try:
                self._statements(tenant, bill)
            except TransientError as exc:
                log.warning("tenant %s: ledger unavailable: %s", name, exc)
                bill.ledger_error = str(exc)
            except KubemeterError as exc:
                log.warning("tenant %s: not billed this cycle: %s", name, exc)
                bill.ledger_error = str(exc)
        return report

    def _record_terms(self, tenant: Tenant, plan: PricePlan, period: Period) -> str:
        """Record the tenant's terms for `period`; returns a currency problem ("" if none)."""
        fingerprint = plan.spec.model_dump_json() + str(tenant.spec.discount_percent)
        key = (tenant.name, str(period))
        cached = self._terms.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        problem = ""
        existing = self.ledger.get_terms(tenant.name, period)
        if existing is not None and existing.plan.currency != plan.spec.currency:
            problem = (
                f"PricePlan {plan.name!r} now prices in {plan.spec.currency}, but {period} is "
                f"billed in {existing.plan.currency}: the period keeps its terms, and the new "
                f"plan applies from {period.next()} (kubemeter never converts currencies)"
            )
        else:
            # ConflictError: finalised meanwhile (a clock at the very end of the period)
            with contextlib.suppress(ConflictError):
                self.ledger.set_terms(tenant.name, period, plan.spec, tenant.spec.discount_percent)
        self._terms[key] = (fingerprint, problem)
        return problem

    def _statements(self, tenant: Tenant, bill: TenantBill) -> None:
        name, period = tenant.name, bill.period
        try:
            bill.statement = running_statement(self.ledger, name, period)
        except InputError:  # no terms for this period (no plan yet)
            bill.statement = None
        previous = period.previous()
        final = self._finals.get((name, previous))
        if final is None:
            final = final_statement(self.ledger, name, previous)
            if final is not None:
                self._finals[(name, previous)] = final
        if final is not None:
            bill.previous, bill.previous_final = final, True
        else:
            try:
                bill.previous = running_statement(self.ledger, name, previous)
            except InputError:
                bill.previous = None
        if not _prepaid(tenant):
            return
        dues: list[Due] = []
        if bill.previous is not None and not bill.previous_final:
            dues.append(Due(previous, bill.previous.total, bill.previous.currency))
        if bill.statement is not None:
            dues.append(Due(period, bill.statement.total, bill.statement.currency))
        bill.wallet = settle_wallet(self.ledger, name, dues)
        if bill.wallet.error and not bill.currency_problem:
            bill.currency_problem = bill.wallet.error
