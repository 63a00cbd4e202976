"""Budget enforcement: stop a Tenant's GPU workloads, restore them exactly, stop them again
when something fights. Acts on a `budget.decision.Decision`; never decides.

    result = await Enforcer(ledger, KubeWorkloads(api), gpu).apply(tenant, decision, context)

**Suspend** (decision `suspend` or `keep`), every cycle while it holds:

1. The suspension: the tenant's active one, or a new one (`suspending`), in the ledger.
2. Find the tenant's GPU workloads (`enforcement.discovery`).
3. **Write-ahead**: every workload not recorded yet is recorded with what it has now
   (replicas, suspend) in one transaction, BEFORE anything is changed. A row is never
   overwritten (a workload seen at 0 because kubemeter scaled it keeps its original 3),
   except for an object deleted and created anew under the same name (another uid).
4. Stop: Deployments and StatefulSets to 0 through `/scale`, Jobs and CronJobs
   `suspend: true`, KEDA ScaledObjects paused (recorded before the annotation is set);
   bare GPU pods get an Event, or are deleted with `budget.bareGpuPods: delete`. A workload
   recorded as stopped that runs again was started by someone else: it is stopped again,
   with an `EnforcementFought` notice naming the field manager. Then the rows are marked
   `stopped`.
5. When every recorded workload is stopped and has no pods left, the suspension becomes
   `suspended`, with the overshoot, and the `WorkloadsSuspended` notice in the same
   transaction. The overshoot follows the total up to the first cycle whose total covers
   the stop (metering trails by its lag), then it is final.

**Restore** (decision `restore`): the suspension becomes `restoring`; each recorded
workload goes back to its recorded replicas / suspend state (KEDA annotation removed) and
is marked `restored`; one deleted or replaced meanwhile is marked `gone` and reported; then
the suspension becomes `restored` with the `WorkloadsRestored` notice, in one transaction.

**Crash safety.** Every change to Kubernetes sets an absolute value recorded beforehand, so
doing it twice is doing it once. A crash after the write-ahead and before the change: the
next leader's cycle finds the row `stopping` and makes the change. After the change and
before the row is marked: it makes the (same) change again and marks it. Mid-restore: the
suspension is `restoring`; the next cycle restores what is not marked `restored` yet (to
the recorded values, whatever the workload shows now) and finishes. A restore is never
lost (the recorded values stay in the ledger) and never done from a value kubemeter set
(rows are written before the first change and never overwritten with 0). Two replicas do
not enforce at once (only the Lease holder runs a cycle); if they did, the unique active
suspension per tenant and the compare-and-set state moves keep the ledger consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.tenant import BareGpuPods, Tenant
from kubemeter_operator.budget.decision import Action, Decision
from kubemeter_operator.enforcement import autoscalers, discovery
from kubemeter_operator.enforcement.discovery import SCALED, Workload
from kubemeter_operator.enforcement.fights import changed_by, fought_field
from kubemeter_operator.errors import KubemeterError
from kubemeter_operator.kube.gpu import GpuResources
from kubemeter_operator.kube.workloads import KEDA_PAUSED, KINDS, NotFoundError, WorkloadApi
from kubemeter_operator.ledger import Ledger, SuspensionRow, WorkloadRecord, WorkloadRow
from kubemeter_operator.ledger import enforcement as wal
from kubemeter_operator.ledger.outbox import Notice
from kubemeter_operator.status import notices
from kubemeter_operator.status.notices import Announcement
from kubemeter_operator.usage import Period

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnforceContext:
    """What the controller knows about the tenant this cycle."""

    now: datetime
    period: str
    total: Decimal
    overshoot: Decimal
    """Spend beyond what was allowed, now (total - limit; the wallet's shortfall)."""
    namespaces: Sequence[str]
    """The tenant's namespaces (those claimed by another tenant too left out)."""
    currency: str | None = None
    metered_until: datetime | None = None
    webhook: bool = False
    before_restore: Callable[[], Awaitable[None]] | None = None
    """Called before the first workload is restored (the status says Restoring, so the
    admission webhook lets the restored pods be created)."""


@dataclass
class EnforcementResult:
    suspension: SuspensionRow | None = None
    workloads: list[WorkloadRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What could not be done this cycle (retried next cycle)."""


def to_notice(tenant: str, a: Announcement, *, webhook: bool) -> Notice:
    return Notice(
        tenant=tenant, key=a.key, type=a.reason, message=a.message, data=a.data,
        period=a.period, severity=a.severity, webhook=webhook,
    )  # fmt: skip


def _label(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}"


class Enforcer:
    def __init__(
        self,
        ledger: Ledger,
        api: WorkloadApi,
        gpu: GpuResources,
        *,
        keda: str = "auto",
        concurrency: int = 16,
    ) -> None:
        self.ledger = ledger
        self.api = api
        self.gpu = gpu
        self.keda = keda
        self.concurrency = concurrency
        self._limits: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._covered: dict[str, datetime] = {}
        """suspension id -> how far metering had covered when its overshoot was last set
        (a restarted operator sets it once more: a later total can only add the spend
        metered meanwhile)."""

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking API call in a thread, at most `concurrency` at once (per event loop:
        a semaphore belongs to the loop it first waited on)."""
        loop = asyncio.get_running_loop()
        if self._limits is None or self._limits[0] is not loop:
            self._limits = (loop, asyncio.Semaphore(self.concurrency))
        async with self._limits[1]:
            return await asyncio.to_thread(fn, *args)

    async def apply(
        self,
        tenant: Tenant,
        decision: Decision,
        ctx: EnforceContext,
        active: SuspensionRow | None,
    ) -> EnforcementResult:
        """Act on the decision for one tenant; `active` is its suspension not restored."""
        if decision.action in (Action.SUSPEND, Action.KEEP):
            return await self._suspend(tenant, decision, ctx, active)
        if active is not None:  # restore (or finish one a crash interrupted)
            return await self._restore(tenant, decision, ctx, active)
        return EnforcementResult()

    # -- suspend ---------------------------------------------------------------------------

    async def _suspend(
        self, tenant: Tenant, decision: Decision, ctx: EnforceContext, active: SuspensionRow | None
    ) -> EnforcementResult:
        budget = tenant.spec.budget
        if active is None:
            started: tuple[SuspensionRow, bool] = await asyncio.to_thread(
                self.ledger.start_suspension, tenant.name, Period.parse(ctx.period),
                str(decision.trigger), budget.limit if budget is not None else None,
                decision.reason,
            )  # fmt: skip
            active = started[0]
        if active.state == wal.RESTORING:  # a restore was interrupted and must not finish
            await asyncio.to_thread(
                self.ledger.move_suspension, active.id, wal.RESTORING, wal.SUSPENDING
            )
            again = await asyncio.to_thread(self.ledger.suspension_workloads, active.id)
            back = [r.key for r in again if r.state == wal.RESTORED]
            await asyncio.to_thread(self.ledger.set_workload_states, active.id, back, wal.STOPPING)
        result = EnforcementResult()
        found = await self._discover(tenant, ctx.namespaces, result)
        rows = await self._write_ahead(tenant, active, found)
        pending = await self._stop(tenant, active, ctx, found, rows, result)
        await self._autoscalers(active, ctx.namespaces, found, rows, result)
        rows = {r.key: r for r in await asyncio.to_thread(
            self.ledger.suspension_workloads, active.id)}  # fmt: skip
        current = await asyncio.to_thread(self.ledger.suspension, active.id) or active
        at_zero = (
            not pending
            and not result.problems
            and all(w.running == 0 for w in found if w.kind != "Pod")
        )
        overshoot = max(ctx.overshoot, Decimal(0))
        if current.state == wal.SUSPENDING and at_zero:
            stopped = sorted(_label(*r.key) for r in rows.values()
                             if r.state in (wal.STOPPED, wal.DELETED))  # fmt: skip
            note = notices.workloads_suspended(
                tenant.name, current.id, period=current.period, trigger=current.trigger,
                reason=current.reason, stopped=stopped, overshoot=overshoot, total=ctx.total,
                budget=budget, currency=ctx.currency,
            )  # fmt: skip
            await asyncio.to_thread(
                self.ledger.move_suspension, current.id, wal.SUSPENDING, wal.SUSPENDED,
                stopped_at=ctx.now, overshoot=overshoot,
                notices=[to_notice(tenant.name, note, webhook=ctx.webhook)],
            )  # fmt: skip
        elif current.state == wal.SUSPENDED and current.stopped_at is not None:
            # metering catches up with the stop: the overshoot follows the total up to and
            # including the first cycle whose total covers the stop, then it is final
            seen = self._covered.get(current.id)
            if seen is None or seen <= current.stopped_at:
                if overshoot != current.overshoot:
                    await asyncio.to_thread(self.ledger.set_overshoot, current.id, overshoot)
                if ctx.metered_until is not None:
                    self._covered[current.id] = ctx.metered_until
        result.suspension = await asyncio.to_thread(self.ledger.suspension, active.id)
        result.workloads = await asyncio.to_thread(self.ledger.suspension_workloads, active.id)
        return result

    async def _discover(
        self, tenant: Tenant, namespaces: Sequence[str], result: EnforcementResult
    ) -> list[Workload]:
        async def one(kind: str, namespace: str) -> list[Workload]:
            try:
                objects = await self._io(self.api.list_kind, kind, namespace)
            except KubemeterError as exc:
                result.problems.append(str(exc))
                return []
            return discovery.gpu_workloads(tenant, kind, objects, self.gpu)

        lists = await asyncio.gather(*(one(k, ns) for ns in namespaces for k in KINDS))
        return [w for found in lists for w in found]

    async def _write_ahead(
        self, tenant: Tenant, active: SuspensionRow, found: Sequence[Workload]
    ) -> dict[tuple[str, str, str], WorkloadRow]:
        rows = {r.key: r for r in await asyncio.to_thread(
            self.ledger.suspension_workloads, active.id)}  # fmt: skip
        delete = (
            tenant.spec.budget is not None
            and tenant.spec.budget.bare_gpu_pods is BareGpuPods.DELETE
        )
        new: list[WorkloadRecord] = []
        replaced: list[WorkloadRecord] = []
        for w in found:
            row = rows.get(w.key)
            if row is not None and row.uid == w.uid:
                continue
            (new if row is None else replaced).append(_record(w, delete=delete))
        if new or replaced:
            await asyncio.to_thread(self.ledger.record_workloads, active.id, new, replaced)
            rows = {r.key: r for r in await asyncio.to_thread(
                self.ledger.suspension_workloads, active.id)}  # fmt: skip
        return rows

    async def _stop(
        self,
        tenant: Tenant,
        active: SuspensionRow,
        ctx: EnforceContext,
        found: Sequence[Workload],
        rows: dict[tuple[str, str, str], WorkloadRow],
        result: EnforcementResult,
    ) -> bool:
        """Stop what runs; True while some change is still pending (made this cycle)."""
        stopped: list[tuple[str, str, str]] = []
        deleted: list[tuple[str, str, str]] = []
        announcements: list[Announcement] = []
        changed = False

        async def stop(w: Workload) -> None:
            nonlocal changed
            row = rows.get(w.key)
            if row is None:
                return
            try:
                if w.kind == "Pod":
                    if row.state == wal.STOPPING:  # delete opted in
                        await self._io(self.api.delete_pod, w.namespace, w.name, w.uid)
                        deleted.append(w.key)
                    if row.state in (wal.STOPPING, wal.LEFT):
                        announcements.append(notices.bare_gpu_pod(
                            tenant.name, active.id, period=active.period, namespace=w.namespace,
                            name=w.name, uid=w.uid, deleted=row.state == wal.STOPPING,
                        ))  # fmt: skip
                    return
                if w.stopped:
                    if row.state == wal.STOPPING:
                        stopped.append(w.key)
                    return
                if row.state == wal.STOPPED:
                    fld = fought_field(w.kind)
                    announcements.append(notices.enforcement_fought(
                        tenant.name, active.id, period=active.period,
                        workload=_label(*w.key), key="/".join(w.key), generation=w.generation,
                        changed_by=changed_by(w.obj, fld, row.autoscaler), field_name=".".join(fld),
                    ))  # fmt: skip
                if w.kind in SCALED:
                    await self._io(self.api.scale, w.kind, w.namespace, w.name, 0)
                else:
                    await self._io(self.api.set_suspend, w.kind, w.namespace, w.name, True)
                changed = True
                stopped.append(w.key)
            except NotFoundError:
                return  # deleted meanwhile: nothing runs
            except KubemeterError as exc:
                result.problems.append(str(exc))

        await asyncio.gather(*(stop(w) for w in found))
        await asyncio.to_thread(self.ledger.set_workload_states, active.id, stopped, wal.STOPPED)
        await asyncio.to_thread(self.ledger.set_workload_states, active.id, deleted, wal.DELETED)
        if announcements:
            await asyncio.to_thread(
                self.ledger.record_notices,
                [to_notice(tenant.name, a, webhook=ctx.webhook) for a in announcements],
            )
        return changed

    async def _autoscalers(
        self,
        active: SuspensionRow,
        namespaces: Sequence[str],
        found: Sequence[Workload],
        rows: dict[tuple[str, str, str], WorkloadRow],
        result: EnforcementResult,
    ) -> None:
        """Record HPAs; pause KEDA ScaledObjects (recorded before the annotation is set)."""
        scaled = [w for w in found if w.kind in SCALED and w.key in rows]
        if not scaled:
            return
        for namespace in sorted({w.namespace for w in scaled}):
            try:
                hpas = autoscalers.targets(await self._io(self.api.list_hpas, namespace))
                objects = (
                    await self._io(self.api.list_scaled_objects, namespace)
                    if self.keda != "off"
                    else None
                )
            except KubemeterError as exc:
                result.problems.append(str(exc))
                continue
            keda = autoscalers.targets(objects or [])
            for w in scaled:
                if w.namespace != namespace:
                    continue
                row = rows[w.key]
                hpa = hpas.get((w.kind, w.name))
                so = keda.get((w.kind, w.name))
                notes = [autoscalers.hpa_note(hpa)] if hpa is not None else []
                ours = row.keda_object
                if so is not None and ours is None and not autoscalers.keda_paused_before(so):
                    ours = autoscalers.scaled_object_name(so)
                if ours is not None and so is not None:
                    notes.append(autoscalers.keda_note(so))
                note = "; ".join(notes) or None
                if note != row.autoscaler or ours != row.keda_object:
                    await asyncio.to_thread(
                        self.ledger.set_workload_autoscaler, active.id, w.key, note, ours
                    )
                if ours is not None and so is not None and not _paused_by_us(so):
                    try:
                        await self._io(self.api.annotate_scaled_object, namespace, ours, "0")
                    except KubemeterError as exc:
                        result.problems.append(str(exc))

    # -- restore ---------------------------------------------------------------------------

    async def _restore(
        self, tenant: Tenant, decision: Decision, ctx: EnforceContext, active: SuspensionRow
    ) -> EnforcementResult:
        result = EnforcementResult()
        if ctx.before_restore is not None:
            await ctx.before_restore()
        if active.state != wal.RESTORING:
            await asyncio.to_thread(
                self.ledger.move_suspension, active.id, (wal.SUSPENDING, wal.SUSPENDED),
                wal.RESTORING,
            )  # fmt: skip
        rows = await asyncio.to_thread(self.ledger.suspension_workloads, active.id)
        restored: list[tuple[str, str, str]] = []
        gone: list[tuple[tuple[str, str, str], str]] = []

        async def back(row: WorkloadRow) -> None:
            try:
                obj = await self._io(self.api.get, row.kind, row.namespace, row.name)
                uid = str((obj or {}).get("metadata", {}).get("uid", ""))
                if obj is None or uid != row.uid:
                    why = "deleted while suspended" if obj is None else "replaced while suspended"
                    gone.append((row.key, why))
                    return
                if row.kind in SCALED:
                    await self._io(self.api.scale, row.kind, row.namespace, row.name,
                                   row.replicas if row.replicas is not None else 1)  # fmt: skip
                else:
                    await self._io(self.api.set_suspend, row.kind, row.namespace, row.name,
                                   bool(row.suspend))  # fmt: skip
                if row.keda_object:
                    with contextlib.suppress(NotFoundError):  # the ScaledObject was deleted
                        await self._io(self.api.annotate_scaled_object, row.namespace,
                                       row.keda_object, None)  # fmt: skip
                restored.append(row.key)
            except NotFoundError:
                gone.append((row.key, "deleted while suspended"))
            except KubemeterError as exc:
                result.problems.append(str(exc))

        todo = [r for r in rows if r.state in (wal.STOPPING, wal.STOPPED) and r.kind != "Pod"]
        await asyncio.gather(*(back(r) for r in todo))
        left = [r.key for r in rows if r.kind == "Pod" and r.state in (wal.LEFT, wal.STOPPING)]
        await asyncio.to_thread(
            self.ledger.set_workload_states, active.id, [*restored, *left], wal.RESTORED
        )
        for key, why in gone:
            await asyncio.to_thread(
                self.ledger.set_workload_states, active.id, [key], wal.GONE, note=why
            )
        if not result.problems:
            rows = await asyncio.to_thread(self.ledger.suspension_workloads, active.id)
            back_again = sorted(_label(*r.key) for r in rows
                                if r.state == wal.RESTORED and r.kind != "Pod")  # fmt: skip
            skipped = sorted(f"{_label(*r.key)} ({r.note})" for r in rows if r.state == wal.GONE)
            why = decision.reason if decision.action is Action.RESTORE else "it was lifted"
            note = notices.workloads_restored(
                tenant.name, active.id, period=active.period, why=why, restored=back_again,
                skipped=skipped,
            )  # fmt: skip
            await asyncio.to_thread(
                self.ledger.move_suspension, active.id, wal.RESTORING, wal.RESTORED,
                notices=[to_notice(tenant.name, note, webhook=ctx.webhook)],
            )  # fmt: skip
        result.suspension = await asyncio.to_thread(self.ledger.suspension, active.id)
        result.workloads = await asyncio.to_thread(self.ledger.suspension_workloads, active.id)
        return result


def _paused_by_us(scaled_object: Mapping[str, Any]) -> bool:
    annotations = (scaled_object.get("metadata") or {}).get("annotations") or {}
    return annotations.get(KEDA_PAUSED) == "0"


def _record(w: Workload, *, delete: bool) -> WorkloadRecord:
    if w.kind == "Pod":
        state = wal.STOPPING if delete else wal.LEFT
    else:
        state = wal.STOPPED if w.stopped else wal.STOPPING
    return WorkloadRecord(
        kind=w.kind, namespace=w.namespace, name=w.name, uid=w.uid, replicas=w.replicas,
        suspend=w.suspend, state=state,
    )  # fmt: skip
