"""After each metering cycle: rate every Tenant, burn prepaid wallets, write status, post
Events, and close finished periods.

Kubernetes and the ledger are reached through small protocols, so the steps are testable
with the real ledger and a recording writer; the operator wires in `kube.client.KubeWriter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant, TenantStatus
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.errors import ConflictError, InputError, KubemeterError, TransientError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.tenancy import TenancyMap
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.status import build_status, status_events, status_patch
from kubemeter_operator.status.forecast import TotalSample
from kubemeter_operator.usage.periods import Period

log = logging.getLogger(__name__)

RECENT_WINDOW = timedelta(hours=1)


class StatusWriter(Protocol):
    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None: ...

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None: ...


@dataclass(frozen=True)
class CycleFacts:
    """What the metering loop knows, shared by every tenant's reconcile."""

    now: datetime
    metered_until: datetime | None
    """End of the last committed metering window."""
    degraded: Mapping[str, str] = field(default_factory=dict)


def _body(tenant: Tenant) -> dict[str, Any]:
    return {"apiVersion": tenant.api_version, "kind": tenant.kind, "metadata": tenant.metadata}


def wallet_checkpoint(tenant: str) -> str:
    return f"wallet-burn/{tenant}"


class TenantReconciler:
    """Turns ledger totals into Tenant status, once per cycle per tenant."""

    def __init__(self, ledger: Ledger, writer: StatusWriter) -> None:
        self.ledger = ledger
        self.writer = writer
        self._recent: dict[str, deque[TotalSample]] = {}
        self._terms: dict[tuple[str, str], str] = {}
        self._written: dict[str, TenantStatus] = {}

    async def reconcile_all(
        self, tenants: Mapping[str, Tenant], plans: Mapping[str, PricePlan], facts: CycleFacts
    ) -> None:
        tenancy = TenancyMap.build(tenants.values())
        for name, tenant in sorted(tenants.items()):
            conflicts = {c.namespace: c.owner for c in tenancy.conflicts_of(name)}
            plan = plans.get(tenant.spec.price_plan_ref.name)
            try:
                await self.reconcile(tenant, plan, facts, conflicts)
            except KubemeterError as exc:
                log.warning("tenant %s: status not updated this cycle: %s", name, exc)
            except Exception:  # one tenant's bug must not stop the others
                log.exception("tenant %s: reconcile failed", name)

    async def reconcile(
        self,
        tenant: Tenant,
        plan: PricePlan | None,
        facts: CycleFacts,
        conflicts: Mapping[str, str],
    ) -> TenantStatus:
        name = tenant.name
        period = Period.of(facts.now)
        previous = self._written.get(name) or tenant.status
        closed_total = await self._close_previous_period(tenant, previous, period, facts)

        statement: Statement | None = None
        balance: Decimal | None = None
        try:
            if plan is not None:
                await self._record_terms(tenant, plan, period)
                statement = await asyncio.to_thread(
                    billing_statements.running_statement, self.ledger, name, period
                )
            if tenant.spec.wallet is not None and tenant.spec.wallet.enabled:
                balance = await self._burn_wallet(name, period, statement)
        except TransientError as exc:  # ledger down: keep the last figures, say so
            log.warning("tenant %s: ledger unavailable: %s", name, exc)
            facts = CycleFacts(
                facts.now, facts.metered_until, {**facts.degraded, "ledger": str(exc)}
            )

        recent = self._recent.setdefault(name, deque())
        status = build_status(
            tenant,
            plan.spec if plan is not None else None,
            statement,
            now=facts.now,
            period=period,
            wallet_balance=balance,
            recent_totals=list(recent),
            degraded=facts.degraded,
            conflicts=conflicts,
            last_metered_time=facts.metered_until,
            previous=previous,
        )
        if statement is not None:
            recent.append(TotalSample(facts.now, statement.total))
            while recent and facts.now - recent[0].at > RECENT_WINDOW:
                recent.popleft()

        patch = status_patch(previous, status)
        if patch is not None:
            await self.writer.patch_status("tenants", name, patch)
            self._written[name] = status
        for event in status_events(name, previous, status, closed_period_total=closed_total):
            await self.writer.post_event(
                _body(tenant), reason=event.reason, message=event.message, type_=event.type
            )
        return status

    def forget(self, tenant: str) -> None:
        """A Tenant was deleted: drop what is cached for it."""
        self._recent.pop(tenant, None)
        self._written.pop(tenant, None)
        for key in [k for k in self._terms if k[0] == tenant]:
            del self._terms[key]

    async def _record_terms(self, tenant: Tenant, plan: PricePlan, period: Period) -> None:
        """Snapshot plan + discount for the period (only when they changed)."""
        fingerprint = plan.spec.model_dump_json() + str(tenant.spec.discount_percent)
        key = (tenant.name, str(period))
        if self._terms.get(key) == fingerprint:
            return
        await asyncio.to_thread(
            self.ledger.set_terms, tenant.name, period, plan.spec, tenant.spec.discount_percent
        )
        self._terms[key] = fingerprint

    async def _close_previous_period(
        self,
        tenant: Tenant,
        previous: TenantStatus | None,
        period: Period,
        facts: CycleFacts,
    ) -> Decimal | None:
        """Finalise the statement of the period the status still shows, once metering has
        covered all of it. Returns its total (for the PeriodClosed Event)."""
        if previous is None or previous.period is None or previous.period == str(period):
            return None
        closed = Period.parse(previous.period)
        if closed >= period or facts.metered_until is None or facts.metered_until < closed.end:
            return None
        try:
            statement = await asyncio.to_thread(
                billing_statements.running_statement, self.ledger, tenant.name, closed
            )
        except InputError as exc:  # no terms recorded for it: nothing was rated then
            log.warning("tenant %s: cannot close %s: %s", tenant.name, closed, exc)
            return None
        try:
            await asyncio.to_thread(
                billing_statements.finalize, self.ledger, tenant.name, closed, statement
            )
        except ConflictError:
            final = await asyncio.to_thread(
                billing_statements.final_statement, self.ledger, tenant.name, closed
            )
            return final.total if final is not None else None
        return statement.total

    async def _burn_wallet(
        self, tenant: str, period: Period, statement: Statement | None
    ) -> Decimal:
        """Burn the prepaid balance by what was rated since the last burn.

        Write-ahead: the intent (new charged total, key, amount) is checkpointed before the
        idempotent burn, and a pending intent is re-applied first; so a crash between the
        two neither skips nor repeats a charge.
        """
        name = wallet_checkpoint(tenant)
        state = await asyncio.to_thread(self.ledger.get_checkpoint, name) or {}
        pending = state.get("pending")
        if pending:
            await asyncio.to_thread(
                self.ledger.burn, tenant, Decimal(pending["amount"]), pending["key"]
            )
        charged = Decimal(state.get("charged", "0")) if state.get("period") == str(period) else None
        if statement is not None:
            charged = charged if charged is not None else Decimal(0)
            if statement.total > charged:
                amount = statement.total - charged
                key = f"burn/{tenant}/{period}/{statement.total}"
                intent = {
                    "period": str(period),
                    "charged": str(statement.total),
                    "pending": {"key": key, "amount": str(amount)},
                }
                await asyncio.to_thread(self.ledger.set_checkpoint, name, intent)
                await asyncio.to_thread(self.ledger.burn, tenant, amount, key)
                await asyncio.to_thread(
                    self.ledger.set_checkpoint,
                    name,
                    {"period": str(period), "charged": str(statement.total)},
                )
        return await asyncio.to_thread(self.ledger.balance, tenant)
