"""The notification outbox: budget notices recorded once, then announced at least once.

    record(conn, [Notice("acme", "2026-11/threshold/80", "BudgetThresholdCrossed", ...)], now)
    pending_events(conn)                   # rows whose Kubernetes Event is not posted yet
    due_webhooks(conn, now)                # webhook deliveries to attempt now, oldest first
    record_attempt(conn, id, now, delivered=False, error="HTTP 500", next_attempt_at=later)
    delivery_summaries(conn)               # per tenant: the latest delivery, dead letters
    prune(conn, "2026-09")                 # finished notices of periods before 2026-09

What is written, and why a crash at any line is safe:

- A notice is one row per (tenant, key) (`notification`, unique index on both; the id is
  `digest(tenant, key)`, the CloudEvents `id`). `record` inserts with ON CONFLICT DO
  NOTHING, so the same notice recorded again (a restart, a failover, two operators at
  once) is a no-op and only the first recording is announced; its content wins, whatever a
  later recording says. The caller records a notice in the transaction of the state change
  it announces (`LedgerTx.record_notices`), so a notice exists if and only if the change
  committed.
- Its Kubernetes Event: `event_state` pending -> posted. The notifier posts the Event, then
  marks it posted in a later transaction; a crash in between posts it again (at least once).
- Its webhook: `webhook_state` none (the tenant had no webhook when it was recorded) or
  pending -> delivered | dead. Each attempt is recorded after it (attempts + 1, when, the
  error, and the next attempt's time or dead); a crash before that repeats the attempt with
  the same id and body (at least once; receivers dedupe by id). Every update is a
  compare-and-set on `webhook_state = 'pending'` (and, for a failure, on the attempt count
  the attempt started from): a delivered or dead row never goes back to pending, and two
  operators racing on one row count one failed attempt, not two.
- Retention: `prune` deletes the notices of periods before a given one once they are
  finished (Event posted, webhook delivered, dead or never wanted). Every notice key starts
  with its period and only the current period's (and a suspension's, restored by the next
  period at the latest) are ever recorded again, so a pruned row can never fire twice. An
  unfinished row is kept whatever its age.

This module is a store: it decides nothing about what to announce (the controller does),
prices nothing and sends nothing (notifications does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, and_, delete, func, select, update

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger.codec import canonical_json, digest
from kubemeter_operator.ledger.schema import notification
from kubemeter_operator.ledger.usage import _insert

Severity = Literal["Normal", "Warning"]
DeliveryOutcome = Literal["delivered", "retrying", "dead"]

EVENT_PENDING = "pending"
EVENT_POSTED = "posted"
WEBHOOK_NONE = "none"
WEBHOOK_PENDING = "pending"
WEBHOOK_DELIVERED = "delivered"
WEBHOOK_DEAD = "dead"

_PERIOD_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
_MAX_ERROR = 500


def notice_id(tenant: str, key: str) -> str:
    """The stable event id of a notice (64 hex digits): the same on every retry, restart
    and replica."""
    return digest(tenant, key)


@dataclass(frozen=True)
class Notice:
    """Something announced once per (tenant, key): a Kubernetes Event on the Tenant and,
    when `webhook` (the tenant named one when it was recorded), a webhook delivery.

    `key` names what is announced once, e.g. `2026-11/threshold/80`; `type` is the Event
    reason (`BudgetThresholdCrossed`); `data` is the webhook's event-specific fields (plain
    JSON values, Decimals and datetimes; no floats: money is exact)."""

    tenant: str
    key: str
    type: str
    message: str
    data: Mapping[str, Any]
    period: str | None = None
    severity: Severity = "Warning"
    webhook: bool = False

    @property
    def id(self) -> str:
        return notice_id(self.tenant, self.key)


@dataclass(frozen=True)
class OutboxRow:
    """A stored notice and how far its announcement got."""

    id: str
    tenant: str
    key: str
    period: str | None
    type: str
    severity: Severity
    message: str
    data: dict[str, Any]
    created_at: datetime
    event_state: str
    webhook_state: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class DeliverySummary:
    """A tenant's latest webhook delivery (the row attempted last) and its dead letters."""

    tenant: str
    event_id: str
    type: str
    state: DeliveryOutcome
    attempts: int
    at: datetime
    """When the latest attempt was made (or the delivery given up)."""
    error: str | None
    dead_letters: int


def _no_float(value: Any) -> Any:
    raise InputError("data", "floats are not allowed (use Decimal or int)")


def _data_json(notice: Notice) -> str:
    try:
        text = canonical_json(dict(notice.data))
    except (TypeError, ValueError) as exc:
        raise InputError(f"notice {notice.key!r}: data", f"not JSON: {exc}") from exc
    # Refuse floats (money is exact), and anything canonical JSON cannot say.
    json.loads(text, parse_float=_no_float, parse_constant=_no_float)
    return text


def _check(notice: Notice) -> None:
    where = f"notice {notice.key!r}"
    if not notice.tenant or len(notice.tenant) > 253:
        raise InputError(f"{where}: tenant", "required, at most 253 characters")
    if not notice.key or len(notice.key) > 600:
        raise InputError(f"{where}: key", "required, at most 600 characters")
    if not _TYPE_RE.match(notice.type):
        raise InputError(f"{where}: type", "a CamelCase reason of at most 64 characters")
    if notice.severity not in ("Normal", "Warning"):
        raise InputError(f"{where}: severity", "Normal or Warning")
    if notice.period is not None and not _PERIOD_RE.match(notice.period):
        raise InputError(f"{where}: period", "YYYY-MM")
    if not isinstance(notice.data, Mapping):
        raise InputError(f"{where}: data", "must be a mapping")


def record(conn: Connection, notices: Sequence[Notice], now: datetime) -> list[Notice]:
    """Insert the notices not recorded yet; returns those inserted now, in the given order.

    A notice whose (tenant, key) exists is skipped (so is a repeat within `notices`: the
    first one counts). A webhook notice is due at once (`next_attempt_at = now`)."""
    rows: dict[str, dict[str, Any]] = {}
    first: dict[str, Notice] = {}
    for n in notices:
        _check(n)
        if n.id in first:
            continue
        first[n.id] = n
        rows[n.id] = {
            "id": n.id,
            "tenant": n.tenant,
            "key": n.key,
            "period": n.period,
            "type": n.type,
            "severity": n.severity,
            "message": n.message,
            "data": _data_json(n),
            "created_at": now,
            "event_state": EVENT_PENDING,
            "webhook_state": WEBHOOK_PENDING if n.webhook else WEBHOOK_NONE,
            "attempts": 0,
            "next_attempt_at": now if n.webhook else None,
            "last_attempt_at": None,
            "last_error": None,
            "delivered_at": None,
        }
    if not rows:
        return []
    # No conflict target: a conflict on the key index or on the id (a digest of the same
    # key) is the same notice.
    stmt = _insert(conn, notification).on_conflict_do_nothing().returning(notification.c.id)
    inserted = set(conn.execute(stmt, [rows[i] for i in sorted(rows)]).scalars())
    return [n for i, n in first.items() if i in inserted]


def keys(conn: Connection, tenant: str, prefix: str = "") -> set[str]:
    """The keys recorded for `tenant` that start with `prefix` (`2026-11/threshold/`)."""
    c = notification.c
    stmt = select(c.key).where(c.tenant == tenant)
    if prefix:
        stmt = stmt.where(c.key.startswith(prefix, autoescape=True))
    return set(conn.execute(stmt).scalars())


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=r.id,
        tenant=r.tenant,
        key=r.key,
        period=r.period,
        type=r.type,
        severity=r.severity,
        message=r.message,
        data=json.loads(r.data),
        created_at=r.created_at,
        event_state=r.event_state,
        webhook_state=r.webhook_state,
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        last_attempt_at=r.last_attempt_at,
        last_error=r.last_error,
        delivered_at=r.delivered_at,
    )


def get(conn: Connection, event_id: str) -> OutboxRow | None:
    found = conn.execute(select(notification).where(notification.c.id == event_id)).first()
    return _row(found) if found is not None else None


def rows(conn: Connection, tenant: str | None = None) -> list[OutboxRow]:
    """Every stored notice (of `tenant`), oldest first."""
    c = notification.c
    stmt = select(notification).order_by(c.created_at, c.id)
    if tenant is not None:
        stmt = stmt.where(c.tenant == tenant)
    return [_row(r) for r in conn.execute(stmt)]


def pending_events(conn: Connection, limit: int = 500) -> list[OutboxRow]:
    """Notices whose Kubernetes Event is not marked posted, oldest first."""
    c = notification.c
    stmt = (
        select(notification)
        .where(c.event_state == EVENT_PENDING)
        .order_by(c.created_at, c.id)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(stmt)]


def mark_events_posted(conn: Connection, ids: Iterable[str]) -> int:
    """Mark these notices' Events posted; returns how many changed now."""
    wanted = sorted(set(ids))
    if not wanted:
        return 0
    c = notification.c
    stmt = (
        update(notification)
        .where(c.id.in_(wanted), c.event_state == EVENT_PENDING)
        .values(event_state=EVENT_POSTED)
    )
    return int(conn.execute(stmt).rowcount)


def due_webhooks(conn: Connection, now: datetime, limit: int = 100) -> list[OutboxRow]:
    """Webhook deliveries pending whose next attempt is due at `now`, oldest first."""
    c = notification.c
    stmt = (
        select(notification)
        .where(c.webhook_state == WEBHOOK_PENDING, c.next_attempt_at <= now)
        .order_by(c.created_at, c.id)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(stmt)]


def _error(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= _MAX_ERROR else error[: _MAX_ERROR - 3] + "..."


def record_attempt(
    conn: Connection,
    event_id: str,
    now: datetime,
    *,
    delivered: bool,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
    seen_attempts: int | None = None,
) -> bool:
    """Record one delivery attempt: delivered, failed with a next attempt, or (failed and
    `next_attempt_at` None) dead. Returns whether the row changed (False: it was no longer
    pending, or, given `seen_attempts`, another attempt was recorded since it was read)."""
    c = notification.c
    where = [c.id == event_id, c.webhook_state == WEBHOOK_PENDING]
    if delivered:
        values: dict[str, Any] = {
            "webhook_state": WEBHOOK_DELIVERED,
            "delivered_at": now,
            "next_attempt_at": None,
            "last_error": None,
        }
    else:
        if seen_attempts is not None:
            where.append(c.attempts == seen_attempts)
        values = {
            "webhook_state": WEBHOOK_PENDING if next_attempt_at is not None else WEBHOOK_DEAD,
            "next_attempt_at": next_attempt_at,
            "last_error": _error(error or "failed"),
        }
    stmt = (
        update(notification)
        .where(and_(*where))
        .values(attempts=c.attempts + 1, last_attempt_at=now, **values)
    )
    return bool(conn.execute(stmt).rowcount)


def dead_letter(conn: Connection, event_id: str, now: datetime, error: str) -> bool:
    """Give a pending delivery up without attempting it (e.g. the webhook was removed).
    Returns whether the row changed."""
    c = notification.c
    stmt = (
        update(notification)
        .where(c.id == event_id, c.webhook_state == WEBHOOK_PENDING)
        .values(
            webhook_state=WEBHOOK_DEAD,
            next_attempt_at=None,
            last_attempt_at=now,
            last_error=_error(error),
        )
    )
    return bool(conn.execute(stmt).rowcount)


_OUTCOME: dict[str, DeliveryOutcome] = {
    WEBHOOK_DELIVERED: "delivered",
    WEBHOOK_PENDING: "retrying",
    WEBHOOK_DEAD: "dead",
}


def prune(conn: Connection, before_period: str) -> int:
    """Delete the finished notices of periods before `before_period` (`YYYY-MM`); returns
    how many. A pending Event or webhook delivery is kept, whatever its period."""
    if not _PERIOD_RE.match(before_period):
        raise InputError("before_period", f"{before_period!r} is not YYYY-MM")
    c = notification.c
    gone = conn.execute(
        delete(notification).where(
            c.period.is_not(None),
            c.period < before_period,
            c.event_state == EVENT_POSTED,
            c.webhook_state != WEBHOOK_PENDING,
        )
    )
    return int(gone.rowcount or 0)


def delivery_summaries(conn: Connection) -> dict[str, DeliverySummary]:
    """Per tenant with any attempted delivery: the row attempted last (ties: the larger id)
    and the number of its dead-lettered rows."""
    c = notification.c
    counted = select(c.tenant, func.count()).where(c.webhook_state == WEBHOOK_DEAD)
    dead: dict[str, int] = {
        tenant: int(n) for tenant, n in conn.execute(counted.group_by(c.tenant))
    }
    rank = (
        func.row_number()
        .over(partition_by=c.tenant, order_by=(c.last_attempt_at.desc(), c.id.desc()))
        .label("rank")
    )
    ranked = (
        select(
            c.tenant,
            c.id,
            c.type,
            c.webhook_state,
            c.attempts,
            c.last_attempt_at,
            c.last_error,
            rank,
        )
        .where(c.last_attempt_at.is_not(None), c.webhook_state != WEBHOOK_NONE)
        .subquery()
    )
    out: dict[str, DeliverySummary] = {}
    for r in conn.execute(select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.tenant)):
        out[r.tenant] = DeliverySummary(
            tenant=r.tenant,
            event_id=r.id,
            type=r.type,
            state=_OUTCOME[r.webhook_state],
            attempts=r.attempts,
            at=r.last_attempt_at,
            error=r.last_error if r.webhook_state != WEBHOOK_DELIVERED else None,
            dead_letters=dead.get(r.tenant, 0),
        )
    return out


__all__ = [
    "EVENT_PENDING",
    "EVENT_POSTED",
    "WEBHOOK_DEAD",
    "WEBHOOK_DELIVERED",
    "WEBHOOK_NONE",
    "WEBHOOK_PENDING",
    "DeliveryOutcome",
    "DeliverySummary",
    "Notice",
    "OutboxRow",
    "Severity",
    "dead_letter",
    "delivery_summaries",
    "due_webhooks",
    "get",
    "keys",
    "mark_events_posted",
    "notice_id",
    "pending_events",
    "prune",
    "record",
    "record_attempt",
    "rows",
]
