"""The order of one operator cycle, spelled out in one place (`OperatorCycle.run_once`):

1. **meter**: the next metering window, from Prometheus into the ledger (`metering`), or a
   recorded failure (the checkpoint does not move; the next success backfills);
2. **bill**: terms, the close of every period metering has covered, wallets settled per
   period (`billing.biller`);
3. **decide -> enforce**: each Tenant's budget decision, its notices recorded once in the
   ledger's outbox, and the GPU workloads stopped or restored (`controller.budgets`);
4. **report**: each Tenant's status and Events, and PeriodClosed for finalised periods
   (`controller.reconcile`);
5. **notify**: the outbox delivered, as Kubernetes Events and signed webhooks
   (`notifications.delivery`).

While metering is behind (catching up after an outage or a restart), 2-5 wait until it has
caught up: a close decided on a half-metered span would be early for nobody's benefit. Time
is an input (`now`, default the clock): the time-travel tests run simulated months through
`run_once` in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.billing.biller import Biller, BillingReport
from kubemeter_operator.controller.budgets import BudgetStep
from kubemeter_operator.controller.reconcile import CycleFacts, TenantReconciler
from kubemeter_operator.errors import KubemeterError
from kubemeter_operator.ledger.quarantine import QuarantineEntry
from kubemeter_operator.metering.cycle import CycleResult
from kubemeter_operator.metering.loop import MeteringLoop

log = logging.getLogger(__name__)

World = Callable[[], tuple[Mapping[str, Tenant], Mapping[str, PricePlan]]]
"""The Tenants and PricePlans the operator currently knows, by name."""


class Notify(Protocol):
    """Delivers the outbox (`notifications.delivery.Notifier`)."""

    async def run_once(self, now: datetime, tenants: Mapping[str, Tenant]) -> Any: ...


@dataclass(frozen=True)
class CycleOutcome:
    wait_s: float
    """Seconds until the next cycle (0: metering is behind, go again at once)."""
    billing: BillingReport | None = None
    """None when billing and status waited for metering to catch up."""


class OperatorCycle:
    def __init__(
        self,
        metering: MeteringLoop,
        biller: Biller,
        reconciler: TenantReconciler,
        world: World,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        leading: Callable[[], bool] = lambda: True,
        token_problems: Callable[[], Mapping[str, str]] = dict,
        budgets: BudgetStep | None = None,
        notifier: Notify | None = None,
    ) -> None:
        self.metering = metering
        self.biller = biller
        self.reconciler = reconciler
        self.world = world
        self.clock = clock
        self.leading = leading
        """Whether this replica may act now (see `controller.leader`); a standby's cycle
        does nothing."""
        self.token_problems = token_problems
        self.budgets = budgets
        self.notifier = notifier
        self._stop = asyncio.Event()
        self._metered_until: datetime | None = None
        self._untrusted: CycleResult | None = None
        """The latest committed window's result: what metering distrusts right now."""
        self._held: list[QuarantineEntry] = []
        """Deltas quarantined since the last report (announced once each)."""

    def reset(self) -> None:
        """Forget what this replica knew from before it was a standby: the ledger and the
        API server are the truth when it starts leading."""
        self._metered_until = None
        self.metering.last_success = None
        self.metering.last_result = None
        self.reconciler.reset()
        if self.budgets is not None:
            self.budgets.reset()

    async def run_once(self, now: datetime | None = None) -> CycleOutcome:
        if not self.leading():  # a standby: the leader meters, bills and reports
            return CycleOutcome(self.metering.interval_s)
        now = now or self.clock()
        before = self.metering.last_result
        wait = await self.metering.step(now)  # 1. meter
        result = self.metering.last_result
        if result is not None and result is not before:  # a window was committed now
            self._untrusted = result
            self._held.extend(result.quarantined)
        if result is not None and result.behind and self.metering.last_error is None:
            return CycleOutcome(wait)
        tenants, plans = self.world()
        metered_until = await self._metered(now)
        if not self.leading():  # lost the Lease while metering: write nothing more
            return CycleOutcome(wait)
        billing = await asyncio.to_thread(  # 2. bill
            self.biller.run, now, tenants, plans, metered_until
        )
        if not self.leading():
            return CycleOutcome(wait, billing)
        budgets = (
            await self.budgets.run(  # 3. decide -> enforce
                tenants, billing, now=now, metered_until=metered_until, leading=self.leading
            )
            if self.budgets is not None
            else {}
        )
        if not self.leading():
            return CycleOutcome(wait, billing)
        facts = CycleFacts(
            now,
            metered_until,
            dict(self.metering.degraded),
            **_trust_facts(self._untrusted, self._held),
            token_problems=dict(self.token_problems()),
        )
        self._held = []
        await self.reconciler.reconcile_all(tenants, plans, facts, billing, budgets)  # 4. report
        if self.notifier is not None and self.leading():
            try:
                await self.notifier.run_once(now, tenants)  # 5. notify
            except KubemeterError as exc:
                log.warning("notifications not delivered this cycle: %s", exc)
        return CycleOutcome(wait, billing)

    async def _metered(self, now: datetime) -> datetime | None:
        """The end of the last committed window: this process's last success, else (just
        started, or every cycle failed) what the ledger's checkpoint says."""
        if self.metering.last_success is not None:
            self._metered_until = self.metering.last_success
        elif self._metered_until is None:
            with contextlib.suppress(Exception):
                self._metered_until = await asyncio.to_thread(self.metering.cycle.metered_until)
        return self._metered_until

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Cycle until `stop`; the wait counts from each cycle's start (no drift)."""
        self._stop.clear()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome = await self.run_once()
                wait = outcome.wait_s
            except Exception:  # a bug: keep cycling, report it
                log.exception("operator cycle failed")
                wait = self.metering.interval_s
            wait -= time.monotonic() - started
            if wait <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)


def _trust_facts(result: CycleResult | None, held: Sequence[QuarantineEntry]) -> dict[str, Any]:
    """What metering distrusts (its latest window) and held back (since the last report),
    per tenant."""
    untrusted: dict[str, list[str]] = {}
    quarantined: dict[str, list[str]] = {}
    if result is not None:
        for u in result.untrusted:
            if u.tenant:
                untrusted.setdefault(u.tenant, []).append(u.message)
    for q in held:
        quarantined.setdefault(q.tenant, []).append(
            f"usage of {q.source} series {q.series[:12]} from {q.window_start.isoformat()} "
            f"held back ({q.reason}); `kubemeter quarantine release {q.id[:12]}` bills it"
        )
    return {
        "untrusted": {t: "; ".join(sorted(set(m))[:5]) for t, m in untrusted.items()},
        "quarantined": {t: tuple(m) for t, m in quarantined.items()},
    }
