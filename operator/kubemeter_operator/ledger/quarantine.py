"""Quarantined usage: counter deltas that broke a physics bound, kept and never billed until
an admin releases them (`kubemeter quarantine`).

    hold(conn, entries, now)               # with the metering windows and checkpoint
    rows(conn, state="held")               # what is held (or released, discarded, all)
    decide(conn, "3f2a9c01", RELEASED, now)  # by id or a unique prefix of at least 8 digits

An entry is the usage record metering would have written as the window (tenant, source,
series, window start), plus why it was held. Its id is a digest of that key, so the same
delta is held once: holding it again with the same record is a no-op, with another record a
ConflictError (nothing of the transaction is written). Releasing records the held record as
that usage window (`Ledger.release_quarantined`, one transaction: the row's state and the
usage, booked like any usage; a finalised period's part becomes late usage on the next open
statement); releasing again is a no-op, and so is discarding again. A released entry cannot
be discarded, nor a discarded one released: that is an InputError naming the id.

This module is a store: it never decides what is out of bounds (metering does) and never
prices anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger.codec import digest, instant, parse_record, record_json
from kubemeter_operator.ledger.schema import quarantine

HELD = "held"
RELEASED = "released"
DISCARDED = "discarded"
STATES = (HELD, RELEASED, DISCARDED)

_REF_RE = re.compile(r"^[0-9a-f]{8,64}$")


def entry_id(tenant: str, source: str, series: str, window_start: datetime) -> str:
    """The id of a held delta: a digest of its usage-window key."""
    return digest(tenant, source, series, instant(window_start))


@dataclass(frozen=True)
class QuarantineEntry:
    """A delta metering holds back: the window it would have recorded, and why not."""

    tenant: str
    source: str
    series: str
    window_start: datetime
    window_end: datetime
    reason: str
    record: UsageRecord

    @property
    def id(self) -> str:
        return entry_id(self.tenant, self.source, self.series, self.window_start)


@dataclass(frozen=True)
class QuarantineRow:
    """A stored entry and what the admin decided about it."""

    id: str
    tenant: str
    source: str
    series: str
    window_start: datetime
    window_end: datetime
    reason: str
    record: UsageRecord
    state: str
    created_at: datetime
    decided_at: datetime | None


def _row(r: Any) -> QuarantineRow:
    return QuarantineRow(
        id=r.id,
        tenant=r.tenant,
        source=r.source,
        series=r.series,
        window_start=r.window_start,
        window_end=r.window_end,
        reason=r.reason,
        record=parse_record(r.payload),
        state=r.state,
        created_at=r.created_at,
        decided_at=r.decided_at,
    )


def hold(conn: Connection, entries: Sequence[QuarantineEntry], now: datetime) -> int:
    """Store the entries (held); returns how many are new. Same id and record: a no-op;
    same id, another record: ConflictError."""
    prepared: dict[str, tuple[str, QuarantineEntry]] = {}
    for e in entries:
        if not e.tenant or not e.source or not e.series:
            raise InputError("quarantine", "tenant, source and series are required")
        payload = record_json(e.record)
        seen = prepared.get(e.id)
        if seen is not None and seen[0] != payload:
            raise ConflictError(f"quarantine {e.id}", "held twice with different records")
        prepared[e.id] = (payload, e)
    if not prepared:
        return 0
    rows = [
        {
            "id": qid,
            "tenant": e.tenant,
            "source": e.source,
            "series": e.series,
            "window_start": e.window_start,
            "window_end": e.window_end,
            "reason": e.reason,
            "payload": payload,
            "state": HELD,
            "created_at": now,
            "decided_at": None,
        }
        for qid, (payload, e) in sorted(prepared.items())
    ]
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(quarantine)
    stmt = insert.on_conflict_do_nothing(index_elements=["id"]).returning(quarantine.c.id)
    inserted = set(conn.execute(stmt, rows).scalars())
    missing = [qid for qid in sorted(prepared) if qid not in inserted]
    if missing:
        c = quarantine.c
        for qid, payload in conn.execute(select(c.id, c.payload).where(c.id.in_(missing))):
            if payload != prepared[qid][0]:
                raise ConflictError(f"quarantine {qid}", "held earlier with a different record")
    return len(inserted)


def rows(conn: Connection, state: str | None = HELD) -> list[QuarantineRow]:
    """Entries in ``state`` (None: all), oldest first."""
    if state is not None and state not in STATES:
        raise InputError("state", f"must be one of {', '.join(STATES)}")
    c = quarantine.c
    stmt = select(quarantine).order_by(c.created_at, c.window_start, c.id)
    if state is not None:
        stmt = stmt.where(c.state == state)
    return [_row(r) for r in conn.execute(stmt)]


def find(conn: Connection, ref: str, *, lock: bool = False) -> QuarantineRow:
    """The entry whose id is ``ref`` or starts with it (at least 8 hex digits)."""
    ref = ref.strip().lower()
    if not _REF_RE.match(ref):
        raise InputError("id", f"{ref!r} is not a quarantine id (8 to 64 hex digits)")
    c = quarantine.c
    stmt = select(quarantine).where(c.id == ref if len(ref) == 64 else c.id.startswith(ref))
    stmt = stmt.order_by(c.id).limit(2)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    found = conn.execute(stmt).all()
    if not found:
        raise InputError("id", f"no quarantined usage with id {ref}")
    if len(found) > 1:
        raise InputError("id", f"{ref} names more than one quarantined entry; give more digits")
    return _row(found[0])


def decide(conn: Connection, ref: str, state: str, now: datetime) -> tuple[QuarantineRow, bool]:
    """Move a held entry to ``state`` (released or discarded). Returns the entry and
    whether it changed now (False: it already was in ``state``)."""
    if state not in (RELEASED, DISCARDED):
        raise InputError("state", "must be released or discarded")
    row = find(conn, ref, lock=True)
    if row.state == state:
        return row, False
    if row.state != HELD:
        verb = "released" if state == RELEASED else "discarded"
        raise InputError("id", f"quarantined usage {row.id} was {row.state}; it cannot be {verb}")
    conn.execute(
        update(quarantine)
        .where(quarantine.c.id == row.id, quarantine.c.state == HELD)
        .values(state=state, decided_at=now)
    )
    return QuarantineRow(**{**row.__dict__, "state": state, "decided_at": now}), True


__all__ = [
    "DISCARDED",
    "HELD",
    "RELEASED",
    "STATES",
    "QuarantineEntry",
    "QuarantineRow",
    "decide",
    "entry_id",
    "find",
    "hold",
    "rows",
]
