"""Budget enforcement's write-ahead log: suspensions and the workloads they stopped.

    start(conn, tenant, period, trigger, limit, reason, now)   # or the active one
    record(conn, suspension_id, [WorkloadRecord(...)], now)    # BEFORE changing them
    set_workload_states(conn, suspension_id, keys, "stopped", now)
    set_state(conn, suspension_id, "suspending", "suspended", now, stopped_at=..., overshoot=...)

A suspension is one enforcement of a Tenant's budget: the period whose budget (or wallet)
stopped it, the trigger, the limit then, and a state: ``suspending`` (workloads are being
stopped), ``suspended`` (all GPU workloads reached 0), ``restoring``, ``restored``. At most
one suspension per tenant is not restored (a partial unique index), so two operators that
race to start one end up with the same row.

A workload row keeps what the workload had before kubemeter touched it (replicas, suspend),
written before the change: ``record`` never overwrites a row (ON CONFLICT DO NOTHING), so a
workload seen again at 0 replicas (because kubemeter scaled it) keeps its original 3.
``replace`` overwrites one only when the object was deleted and created anew (another uid).
State changes are compare-and-set on the expected state.

This module is a store: it never decides when to suspend (`budget.decision`) and never
talks to Kubernetes (`enforcement`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger.codec import digest, instant
from kubemeter_operator.ledger.schema import suspended_workload, suspension

SUSPENDING = "suspending"
SUSPENDED = "suspended"
RESTORING = "restoring"
RESTORED = "restored"
STATES = (SUSPENDING, SUSPENDED, RESTORING, RESTORED)

STOPPING = "stopping"
STOPPED = "stopped"
LEFT = "left"
DELETED = "deleted"
GONE = "gone"
WORKLOAD_STATES = (STOPPING, STOPPED, LEFT, DELETED, RESTORED, GONE)


@dataclass(frozen=True)
class SuspensionRow:
    id: str
    tenant: str
    period: str
    trigger: str
    limit: Decimal | None
    reason: str
    state: str
    started_at: datetime
    stopped_at: datetime | None = None
    overshoot: Decimal | None = None
    restored_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.state != RESTORED


WorkloadKey = tuple[str, str, str]
"""(kind, namespace, name)."""


@dataclass(frozen=True)
class WorkloadRecord:
    """What a workload had before kubemeter stopped it."""

    kind: str
    namespace: str
    name: str
    uid: str
    replicas: int | None = None
    suspend: bool | None = None
    state: str = STOPPING
    autoscaler: str | None = None
    keda_object: str | None = None
    note: str | None = None

    @property
    def key(self) -> WorkloadKey:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class WorkloadRow(WorkloadRecord):
    recorded_at: datetime | None = None
    stopped_at: datetime | None = None
    restored_at: datetime | None = None


def _insert(conn: Connection, table: Any) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def _suspension(r: Any) -> SuspensionRow:
    return SuspensionRow(
        id=r.id, tenant=r.tenant, period=r.period, trigger=r.trigger, limit=r.limit,
        reason=r.reason, state=r.state, started_at=r.started_at, stopped_at=r.stopped_at,
        overshoot=r.overshoot, restored_at=r.restored_at,
    )  # fmt: skip


def _workload(r: Any) -> WorkloadRow:
    return WorkloadRow(
        kind=r.kind, namespace=r.namespace, name=r.name, uid=r.uid, replicas=r.replicas,
        suspend=r.suspend, state=r.state, autoscaler=r.autoscaler, keda_object=r.keda_object,
        note=r.note, recorded_at=r.recorded_at, stopped_at=r.stopped_at,
        restored_at=r.restored_at,
    )  # fmt: skip


def active(conn: Connection, tenant: str | None = None) -> dict[str, SuspensionRow]:
    """The suspension not restored yet, per tenant (one tenant's, or all)."""
    c = suspension.c
    stmt = select(suspension).where(c.state != RESTORED)
    if tenant is not None:
        stmt = stmt.where(c.tenant == tenant)
    return {r.tenant: _suspension(r) for r in conn.execute(stmt)}


def latest(conn: Connection, tenants: Iterable[str] | None = None) -> dict[str, SuspensionRow]:
    """Each tenant's most recent suspension (active, else the last restored one)."""
    c = suspension.c
    stmt = select(suspension).order_by(c.tenant, c.started_at, c.id)
    if tenants is not None:
        stmt = stmt.where(c.tenant.in_(sorted(set(tenants))))
    out: dict[str, SuspensionRow] = {}
    for r in conn.execute(stmt):
        row = _suspension(r)
        held = out.get(row.tenant)
        if held is None or not held.active:
            out[row.tenant] = row  # later rows win, but an active one is never replaced
    return out


def start(
    conn: Connection,
    tenant: str,
    period: str,
    trigger: str,
    limit: Decimal | None,
    reason: str,
    now: datetime,
) -> tuple[SuspensionRow, bool]:
    """Start a suspension, or return the one already active (and False)."""
    if not tenant:
        raise InputError("tenant", "is required")
    row = {
        "id": digest("suspension", tenant, period, trigger, instant(now)),
        "tenant": tenant,
        "period": period,
        "trigger": trigger,
        "limit": limit,
        "reason": reason[:2000],
        "state": SUSPENDING,
        "started_at": now,
    }
    stmt = _insert(conn, suspension).values(row).on_conflict_do_nothing()
    created = conn.execute(stmt).rowcount == 1
    current = active(conn, tenant)[tenant]
    return current, created and current.id == row["id"]


def get(conn: Connection, suspension_id: str) -> SuspensionRow | None:
    r = conn.execute(select(suspension).where(suspension.c.id == suspension_id)).first()
    return _suspension(r) if r is not None else None


def set_state(
    conn: Connection,
    suspension_id: str,
    expect: str | Sequence[str],
    state: str,
    now: datetime,
    *,
    stopped_at: datetime | None = None,
    overshoot: Decimal | None = None,
) -> bool:
    """Move the suspension from `expect` to `state` (compare-and-set). True if it moved."""
    if state not in STATES:
        raise InputError("state", f"must be one of {', '.join(STATES)}")
    expected = (expect,) if isinstance(expect, str) else tuple(expect)
    values: dict[str, Any] = {"state": state}
    if stopped_at is not None:
        values["stopped_at"] = stopped_at
    if overshoot is not None:
        values["overshoot"] = overshoot
    if state == RESTORED:
        values["restored_at"] = now
    c = suspension.c
    result = conn.execute(
        update(suspension).where(c.id == suspension_id, c.state.in_(expected)).values(values)
    )
    return result.rowcount == 1


def set_overshoot(conn: Connection, suspension_id: str, overshoot: Decimal) -> None:
    c = suspension.c
    conn.execute(update(suspension).where(c.id == suspension_id).values(overshoot=overshoot))


def record(
    conn: Connection, suspension_id: str, workloads: Sequence[WorkloadRecord], now: datetime
) -> int:
    """Write what the workloads have now, before they are changed; a workload recorded
    earlier keeps its row. Returns how many rows are new."""
    if not workloads:
        return 0
    rows = [_values(suspension_id, w, now) for w in workloads]
    stmt = _insert(conn, suspended_workload).on_conflict_do_nothing()
    return sum(conn.execute(stmt.values(row)).rowcount for row in rows)


def replace(conn: Connection, suspension_id: str, workload: WorkloadRecord, now: datetime) -> None:
    """Overwrite a workload's row: the object was deleted and created anew (another uid)."""
    values = _values(suspension_id, workload, now)
    for key in ("suspension_id", "kind", "namespace", "name"):
        del values[key]
    values["restored_at"] = None
    conn.execute(
        update(suspended_workload).where(*_where(suspension_id, workload.key)).values(values)
    )


def _values(suspension_id: str, w: WorkloadRecord, now: datetime) -> dict[str, Any]:
    if w.state not in WORKLOAD_STATES:
        raise InputError("state", f"must be one of {', '.join(WORKLOAD_STATES)}")
    if w.replicas is not None and w.replicas < 0:
        raise InputError("replicas", "must not be negative")
    return {
        "suspension_id": suspension_id,
        "kind": w.kind,
        "namespace": w.namespace,
        "name": w.name,
        "uid": w.uid,
        "replicas": w.replicas,
        "suspend": w.suspend,
        "state": w.state,
        "autoscaler": w.autoscaler,
        "keda_object": w.keda_object,
        "note": w.note,
        "recorded_at": now,
        "stopped_at": now if w.state in (STOPPED, LEFT, DELETED) else None,
    }


def _where(suspension_id: str, key: WorkloadKey) -> tuple[Any, ...]:
    c = suspended_workload.c
    kind, namespace, name = key
    return (
        c.suspension_id == suspension_id,
        c.kind == kind,
        c.namespace == namespace,
        c.name == name,
    )


def set_workload_states(
    conn: Connection,
    suspension_id: str,
    keys: Iterable[WorkloadKey],
    state: str,
    now: datetime,
    *,
    note: str | None = None,
    keda_object: str | None = None,
) -> None:
    """Set the state of these workloads (stopped_at / restored_at stamped with `now`)."""
    if state not in WORKLOAD_STATES:
        raise InputError("state", f"must be one of {', '.join(WORKLOAD_STATES)}")
    values: dict[str, Any] = {"state": state}
    if state in (STOPPED, LEFT, DELETED):
        values["stopped_at"] = now
    if state in (RESTORED, GONE):
        values["restored_at"] = now
    if note is not None:
        values["note"] = note
    if keda_object is not None:
        values["keda_object"] = keda_object
    for key in keys:
        conn.execute(update(suspended_workload).where(*_where(suspension_id, key)).values(values))


def set_autoscaler(
    conn: Connection,
    suspension_id: str,
    key: WorkloadKey,
    *,
    autoscaler: str | None,
    keda_object: str | None,
) -> None:
    """What else scales the workload (written before kubemeter pauses a ScaledObject)."""
    conn.execute(
        update(suspended_workload)
        .where(*_where(suspension_id, key))
        .values(autoscaler=autoscaler, keda_object=keda_object)
    )


def workloads(conn: Connection, suspension_id: str) -> list[WorkloadRow]:
    c = suspended_workload.c
    stmt = (
        select(suspended_workload)
        .where(c.suspension_id == suspension_id)
        .order_by(c.namespace, c.kind, c.name)
    )
    return [_workload(r) for r in conn.execute(stmt)]
