"""Step 3 of a cycle, decide -> enforce: each Tenant's budget decision, its notices, and
the enforcement that acts on it.

Per tenant, from what billing reported (`billing.biller.TenantBill`):

1. **Decide** (`budget.decision.decide`, pure): the budget, the running total, the wallet,
   the recent burn rate (`budget.burn`), `budget.stopBefore`, and the suspension the
   ledger holds.
2. **Announce**: the thresholds crossed, the limit reached, wallet low or empty
   (`status.notices`), recorded in the ledger's outbox once per key (a key recorded once is
   remembered here too, so a cycle does not ask the ledger again).
3. **Enforce** (`enforcement.Enforcer`), the leader only, when the decision stops or
   restores work or a suspension is in force.

A tenant without a statement this cycle (no price plan, ledger down) is not decided: a
suspension in force stays as it is. One tenant's failure never stops another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from kubemeter_operator.api.tenant import (
    EnforcementState,
    EnforcementStatus,
    SuspendedWorkload,
    Tenant,
    WorkloadState,
)
from kubemeter_operator.billing.biller import BillingReport, TenantBill
from kubemeter_operator.budget.burn import TotalSample, recent_burn_per_hour
from kubemeter_operator.budget.decision import (
    Action,
    BudgetInputs,
    Decision,
    Suspension,
    Trigger,
    WalletView,
    decide,
)
from kubemeter_operator.enforcement.enforcer import EnforceContext, Enforcer, to_notice
from kubemeter_operator.errors import KubemeterError
from kubemeter_operator.ledger import Ledger, SuspensionRow, WorkloadRow
from kubemeter_operator.ledger import enforcement as wal
from kubemeter_operator.status import notices
from kubemeter_operator.telemetry.metrics import TenantMetrics
from kubemeter_operator.usage import Period
from kubemeter_operator.usage.tenancy import TenancyMap

log = logging.getLogger(__name__)

_STATES = {
    wal.SUSPENDING: EnforcementState.SUSPENDING,
    wal.SUSPENDED: EnforcementState.SUSPENDED,
    wal.RESTORING: EnforcementState.RESTORING,
    wal.RESTORED: EnforcementState.RESTORED,
}
_WORKLOAD_STATES = {
    wal.STOPPING: WorkloadState.STOPPING,
    wal.STOPPED: WorkloadState.STOPPED,
    wal.LEFT: WorkloadState.LEFT_RUNNING,
    wal.DELETED: WorkloadState.DELETED,
}


@dataclass
class BudgetOutcome:
    """What the budget step decided and did for one tenant (the status shows it)."""

    decision: Decision | None = None
    enforcement: EnforcementStatus | None = None
    suspended_workloads: list[SuspendedWorkload] | None = None
    """None: unknown this cycle (keep what the status shows)."""
    problems: list[str] = field(default_factory=list)


def enforcement_status(row: SuspensionRow, workloads: Sequence[WorkloadRow]) -> EnforcementStatus:
    skipped = [
        f"{w.kind} {w.namespace}/{w.name}: {w.note}" for w in workloads if w.state == wal.GONE
    ]
    return EnforcementStatus(
        state=_STATES[row.state],
        trigger=row.trigger,
        reason=row.reason[:1000],
        period=row.period,
        started_at=row.started_at,
        stopped_at=row.stopped_at,
        limit=row.limit,
        overshoot=row.overshoot,
        restored_at=row.restored_at,
        skipped=skipped[:100],
    )


def suspended_workloads(
    row: SuspensionRow, workloads: Sequence[WorkloadRow]
) -> list[SuspendedWorkload]:
    if not row.active:
        return []
    return [
        SuspendedWorkload(
            kind=w.kind,
            namespace=w.namespace,
            name=w.name,
            replicas=w.replicas,
            suspend=w.suspend,
            state=_WORKLOAD_STATES[w.state],
            autoscaler=w.autoscaler[:300] if w.autoscaler else None,
            suspended_at=w.stopped_at or w.recorded_at,
        )
        for w in workloads
        if w.state in _WORKLOAD_STATES
    ][:1000]


class StatusPatcher(Protocol):
    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None: ...


class BudgetStep:
    """Decides, announces and enforces; keeps which notice keys are recorded."""

    def __init__(
        self,
        ledger: Ledger,
        enforcer: Enforcer | None,
        writer: StatusPatcher,
        samples: Callable[[str], Sequence[TotalSample]],
        *,
        concurrency: int = 8,
        telemetry: TenantMetrics | None = None,
    ) -> None:
        self.ledger = ledger
        self.telemetry = telemetry
        """Counts the suspensions started and restored here (`telemetry.contract`)."""
        self.concurrency = concurrency
        """Tenants decided and enforced at once."""
        self.enforcer = enforcer
        """None: enforcement is off in this process (decisions and notices still run)."""
        self.writer = writer
        self.samples = samples
        self._recorded: set[tuple[str, str]] = set()
        self._restored: dict[str, list[WorkloadRow]] = {}
        """Workload rows of restored suspensions (final), read once, not every cycle."""

    def reset(self) -> None:
        self._recorded.clear()
        self._restored.clear()

    async def run(
        self,
        tenants: Mapping[str, Tenant],
        billing: BillingReport,
        *,
        now: datetime,
        metered_until: datetime | None,
        leading: Callable[[], bool],
    ) -> dict[str, BudgetOutcome]:
        tenancy = TenancyMap.build(tenants.values())
        try:
            active = await asyncio.to_thread(self.ledger.active_suspensions)
            latest = await asyncio.to_thread(self.ledger.latest_suspensions)
        except KubemeterError as exc:
            log.warning("budget step skipped this cycle: %s", exc)
            return {}
        out: dict[str, BudgetOutcome] = {}
        limit = asyncio.Semaphore(self.concurrency)

        async def one(name: str, tenant: Tenant) -> None:
            async with limit:
                if not leading():
                    return
                bill = billing.tenants.get(name)
                try:
                    out[name] = await self._one(tenant, bill, now, metered_until, tenancy,
                                                active.get(name), latest.get(name))  # fmt: skip
                except KubemeterError as exc:
                    log.warning("tenant %s: budget step failed this cycle: %s", name, exc)
                    out[name] = BudgetOutcome(problems=[str(exc)])
                except Exception:  # one tenant's bug must not stop the others
                    log.exception("tenant %s: budget step failed", name)

        # tenants at once (their Kubernetes calls share the enforcer's bound): 20 tenants
        # crossing in one cycle are stopped in about the time of one
        await asyncio.gather(*(one(n, t) for n, t in sorted(tenants.items())))
        return out

    async def _one(
        self,
        tenant: Tenant,
        bill: TenantBill | None,
        now: datetime,
        metered_until: datetime | None,
        tenancy: TenancyMap,
        active: SuspensionRow | None,
        latest: SuspensionRow | None,
    ) -> BudgetOutcome:
        name = tenant.name
        outcome = BudgetOutcome()
        if latest is not None:
            rows = self._restored.get(latest.id)
            if rows is None:
                rows = await asyncio.to_thread(self.ledger.suspension_workloads, latest.id)
                if not latest.active:  # a restored suspension never changes again
                    self._restored[latest.id] = rows
            outcome.enforcement = enforcement_status(latest, rows)
            outcome.suspended_workloads = suspended_workloads(latest, rows)
        if bill is None or bill.statement is None:
            return outcome
        statement = bill.statement
        total = max(statement.total, Decimal(0))
        budget = tenant.spec.budget
        wallet_report = bill.wallet.wallet if bill.wallet is not None else None
        prepaid = tenant.spec.wallet is not None and tenant.spec.wallet.enabled
        wallet = (
            WalletView(wallet_report.balance, max(wallet_report.outstanding, Decimal(0)))
            if prepaid and wallet_report is not None
            else None
        )
        stop_before = budget.stop_before_delta if budget is not None else None
        burn = (
            recent_burn_per_hour(self.samples(name), now=now, total=total)
            if stop_before is not None
            else None
        )
        held = (
            Suspension(
                period=Period.parse(active.period), trigger=Trigger(active.trigger),
                limit=active.limit,
            )
            if active is not None
            else None
        )  # fmt: skip
        decision = decide(
            BudgetInputs(
                budget, bill.period, total, wallet=wallet, burn_per_hour=burn,
                stop_before=stop_before, suspension=held,
            )
        )  # fmt: skip
        outcome.decision = decision
        webhook = tenant.spec.notification is not None
        announced = notices.budget_announcements(
            name, decision, budget=budget, period=statement.period, total=total,
            currency=statement.currency,
        )  # fmt: skip
        if wallet is not None and wallet_report is not None and tenant.spec.wallet is not None:
            announced += notices.wallet_announcements(
                name, period=statement.period, balance=wallet.balance,
                low_threshold=tenant.spec.wallet.low_balance_threshold,
                topped_up=wallet_report.topped_up, currency=statement.currency,
                enforces=budget is None or decision.trigger is Trigger.WALLET_EMPTY,
            )  # fmt: skip
        fresh = [a for a in announced if (name, a.key) not in self._recorded]
        if fresh:
            await asyncio.to_thread(
                self.ledger.record_notices, [to_notice(name, a, webhook=webhook) for a in fresh]
            )
            self._recorded.update((name, a.key) for a in fresh)

        if self.enforcer is None or (not decision.suspended and active is None):
            return outcome
        limit = budget.limit if budget is not None else None
        if decision.trigger is Trigger.WALLET_EMPTY or (limit is None and wallet is not None):
            overshoot = wallet.shortfall if wallet is not None else Decimal(0)
        else:
            overshoot = max(total - limit, Decimal(0)) if limit is not None else Decimal(0)

        async def before_restore() -> None:
            if outcome.enforcement is not None:
                state = outcome.enforcement.model_copy(update={"state": EnforcementState.RESTORING})
                patch = {"status": {"enforcement": state.to_api()}}
                await self.writer.patch_status("tenants", name, patch)

        ctx = EnforceContext(
            now=now, period=statement.period, total=total, overshoot=overshoot,
            namespaces=tenancy.namespaces_of(name), currency=statement.currency,
            metered_until=metered_until, webhook=webhook, before_restore=before_restore,
        )  # fmt: skip
        result = await self.enforcer.apply(tenant, decision, ctx, active)
        outcome.problems = result.problems
        if self.telemetry is not None and result.suspension is not None:
            if active is None and result.suspension.active:
                self.telemetry.enforced(name, "suspend")
            elif active is not None and not result.suspension.active:
                self.telemetry.enforced(name, "restore")
        if result.suspension is not None:
            outcome.enforcement = enforcement_status(result.suspension, result.workloads)
            outcome.suspended_workloads = suspended_workloads(result.suspension, result.workloads)
        if decision.action is Action.RESTORE and result.problems:
            log.warning("tenant %s: restore incomplete: %s", name, "; ".join(result.problems))
        return outcome
