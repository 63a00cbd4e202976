"""The status step of a cycle: each Tenant's status and Events from what billing reported.

`TenantReconciler` turns a `billing.biller.TenantBill` (statements, wallet, problems) and
the cycle's facts (time, metering health) into the Tenant's status (`status.build_status`),
patches it only when it changed, and posts the Events the change calls for. It also posts
`PeriodClosed` for every statement the ledger has finalised and not yet announced (then
marks it announced: a crash in between posts it again, at least once).

Kubernetes is reached through the small `StatusWriter` protocol, so this is tested with the
real ledger and a recording writer; the operator wires in `kube.client.KubeWriter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import (
    DeliveryState,
    NotificationStatus,
    Tenant,
    TenantStatus,
)
from kubemeter_operator.billing.biller import BillingReport, TenantBill
from kubemeter_operator.controller.budgets import BudgetOutcome
from kubemeter_operator.errors import KubemeterError
from kubemeter_operator.ledger import DeliverySummary, Ledger
from kubemeter_operator.status import build_status, status_events, status_patch
from kubemeter_operator.status.events import period_closed, usage_quarantined
from kubemeter_operator.status.forecast import RECENT_WINDOW, TotalSample
from kubemeter_operator.usage import Period
from kubemeter_operator.usage.tenancy import TenancyMap

log = logging.getLogger(__name__)

_DELIVERY = {
    "delivered": DeliveryState.DELIVERED,
    "retrying": DeliveryState.RETRYING,
    "dead": DeliveryState.DEAD_LETTER,
}


class StatusWriter(Protocol):
    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None: ...

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None: ...


@dataclass(frozen=True)
class CycleFacts:
    """What the metering step knows, shared by every tenant's reconcile."""

    now: datetime
    metered_until: datetime | None
    """End of the last committed metering window."""
    degraded: Mapping[str, str] = field(default_factory=dict)
    untrusted: Mapping[str, str] = field(default_factory=dict)
    """tenant -> why series claiming its pods were ignored (spoofed, wrong job or node)."""
    quarantined: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """tenant -> what metering held back this cycle (one Event each)."""
    token_problems: Mapping[str, str] = field(default_factory=dict)
    """tenant -> why its events API token is refused (weak, missing, shared)."""


def _body(tenant: Tenant) -> dict[str, Any]:
    return {"apiVersion": tenant.api_version, "kind": tenant.kind, "metadata": tenant.metadata}


class TenantReconciler:
    """Writes Tenant status and Events, once per cycle per tenant."""

    def __init__(self, ledger: Ledger, writer: StatusWriter) -> None:
        self.ledger = ledger
        self.writer = writer
        self._recent: dict[str, deque[TotalSample]] = {}
        self._written: dict[str, TenantStatus] = {}

    async def reconcile_all(
        self,
        tenants: Mapping[str, Tenant],
        plans: Mapping[str, PricePlan],
        facts: CycleFacts,
        billing: BillingReport,
        budgets: Mapping[str, BudgetOutcome] | None = None,
    ) -> None:
        tenancy = TenancyMap.build(tenants.values())
        try:
            deliveries = await asyncio.to_thread(self.ledger.delivery_summaries)
        except KubemeterError as exc:
            log.warning("webhook delivery states not read this cycle: %s", exc)
            deliveries = {}
        for name, tenant in sorted(tenants.items()):
            conflicts = {c.namespace: c.owner for c in tenancy.conflicts_of(name)}
            plan = plans.get(tenant.spec.price_plan_ref.name)
            bill = billing.tenants.get(name) or TenantBill(name, _period(facts))
            budget = (budgets or {}).get(name) or BudgetOutcome()
            try:
                await self.reconcile(
                    tenant, plan, facts, conflicts, bill, budget, deliveries.get(name)
                )
            except KubemeterError as exc:
                log.warning("tenant %s: status not updated this cycle: %s", name, exc)
            except Exception:  # one tenant's bug must not stop the others
                log.exception("tenant %s: reconcile failed", name)
        await self.announce_closed(tenants)

    async def reconcile(
        self,
        tenant: Tenant,
        plan: PricePlan | None,
        facts: CycleFacts,
        conflicts: Mapping[str, str],
        bill: TenantBill,
        budget: BudgetOutcome | None = None,
        delivery: DeliverySummary | None = None,
    ) -> TenantStatus:
        name = tenant.name
        previous = self._written.get(name) or tenant.status
        degraded = dict(facts.degraded)
        if bill.ledger_error:
            degraded["ledger"] = bill.ledger_error
        wallet = bill.wallet.wallet if bill.wallet is not None else None
        problems = {
            "currency": bill.currency_problem,
            "close": bill.close_problem,
            "untrusted": facts.untrusted.get(name, ""),
            "token": facts.token_problems.get(name, ""),
            "enforcement": "; ".join(budget.problems)[:1000] if budget is not None else "",
        }
        budget = budget or BudgetOutcome()
        recent = self._recent.setdefault(name, deque())
        status = build_status(
            tenant,
            plan.spec if plan is not None else None,
            bill.statement,
            now=facts.now,
            period=bill.period,
            wallet_balance=wallet.balance if wallet is not None else None,
            wallet_shortfall=wallet.outstanding if wallet is not None else Decimal(0),
            recent_totals=list(recent),
            degraded=degraded,
            conflicts=conflicts,
            last_metered_time=facts.metered_until,
            previous=previous,
            previous_statement=bill.previous,
            previous_final=bill.previous_final,
            billing_problems={k: v for k, v in problems.items() if v},
            decision=budget.decision,
            enforcement=budget.enforcement,
            suspended_workloads=budget.suspended_workloads,
            notification=notification_status(delivery),
        )
        if bill.statement is not None:
            if recent and str(_period(facts)) != bill.statement.period:
                recent.clear()
            recent.append(TotalSample(facts.now, bill.statement.total))
            while recent and facts.now - recent[0].at > RECENT_WINDOW:
                recent.popleft()

        patch = status_patch(previous, status)
        if patch is not None:
            await self.writer.patch_status("tenants", name, patch)
            self._written[name] = status
        events = [
            *status_events(name, previous, status),
            *(usage_quarantined(name, what) for what in facts.quarantined.get(name, ())),
        ]
        for event in events:
            await self.writer.post_event(
                _body(tenant), reason=event.reason, message=event.message, type_=event.type
            )
        return status

    async def announce_closed(self, tenants: Mapping[str, Tenant]) -> None:
        """Post PeriodClosed for every finalised, unannounced statement, then mark it."""
        for final in await asyncio.to_thread(self.ledger.unannounced):
            tenant = tenants.get(final.tenant)
            if tenant is not None:
                event = period_closed(final.tenant, str(final.period), final.total, final.currency)
                await self.writer.post_event(
                    _body(tenant), reason=event.reason, message=event.message, type_=event.type
                )
            else:
                log.info("period %s of deleted tenant %s finalised", final.period, final.tenant)
            await asyncio.to_thread(self.ledger.mark_announced, final.tenant, final.period)

    def recent(self, tenant: str) -> list[TotalSample]:
        """The running totals seen at earlier cycles of this period (the burn rate's)."""
        return list(self._recent.get(tenant, ()))

    def reset(self) -> None:
        """Forget every status written: start from what the API server holds."""
        self._written.clear()
        self._recent.clear()

    def forget(self, tenant: str) -> None:
        """A Tenant was deleted: drop what is cached for it."""
        self._recent.pop(tenant, None)
        self._written.pop(tenant, None)


def notification_status(summary: DeliverySummary | None) -> NotificationStatus | None:
    if summary is None:
        return None
    return NotificationStatus(
        event_id=summary.event_id,
        type=summary.type[:100],
        state=_DELIVERY[summary.state],
        attempts=summary.attempts,
        at=summary.at,
        error=summary.error[:500] if summary.error else None,
        dead_letters=summary.dead_letters,
    )


def _period(facts: CycleFacts) -> Period:
    return Period.of(facts.now)
