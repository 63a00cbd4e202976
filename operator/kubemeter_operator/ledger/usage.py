"""Recording usage idempotently: events (by event id) and metering windows (by window key).

Each call is one transaction: the usage rows, their daily rollups and (for windows) the
metering checkpoints commit together or not at all. A key recorded again with the same
canonical payload is a duplicate (a no-op); with a different payload it is a ConflictError
naming the key, and nothing of the batch is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.api.usage import CustomUsage, UsageRecord
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import pgfast, rollup
from kubemeter_operator.ledger.codec import digest, record_json
from kubemeter_operator.ledger.columns import exact_problem
from kubemeter_operator.ledger.schema import checkpoint, usage_event, usage_window
from kubemeter_operator.rating.totals import Quantities

_IN_CHUNK = 500


@dataclass(frozen=True)
class UsageWindow:
    """One metering window of one series, as the metering loop records it.

    The key is (tenant, source, series, window_start); `record` carries the quantities
    (usually a GpuUsage covering [window_start, window_end)).
    """

    tenant: str
    source: str
    series: str
    window_start: datetime
    window_end: datetime
    record: UsageRecord

    @property
    def key(self) -> str:
        start = self.window_start.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"{self.tenant}/{self.source}/{self.series}@{start}"


@dataclass(frozen=True)
class RecordResult:
    accepted: int
    """Keys recorded now."""
    duplicates: int
    """Keys that were already recorded with the same payload (no-ops)."""


def _insert(conn: Connection, table: Any) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def _check_record(field: str, record: UsageRecord) -> None:
    if isinstance(record, CustomUsage):
        problem = exact_problem(record.quantity)
        if problem:
            raise InputError(f"{field}.quantity", problem)


_PG_INSERT_EVENTS = (
    "INSERT INTO usage_event (event_id, tenant, at, payload_hash, payload, recorded_at) "
    "SELECT e.event_id, %(tenant)b::text, e.at, e.payload_hash, e.payload, "
    "%(recorded_at)b::timestamptz "
    "FROM unnest(%(event_id)b::text[], %(at)b::timestamptz[], %(payload_hash)b::text[], "
    "%(payload)b::text[]) AS e(event_id, at, payload_hash, payload) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
"""PostgreSQL: one fixed-shape statement per batch (arrays + unnest), prepared once."""


def record_events(
    conn: Connection, tenant: str, records: Sequence[UsageRecord], now: datetime
) -> RecordResult:
    if not tenant:
        raise InputError("tenant", "required")
    prepared: dict[str, tuple[str, str, UsageRecord]] = {}
    in_batch_dups = 0
    for i, record in enumerate(records):
        if record.id is None:
            raise InputError(f"[{i}].id", "required: the event id is the idempotency key")
        if record.tenant is not None and record.tenant != tenant:
            raise InputError(
                f"[{i}].tenant", f"is {record.tenant!r} but the batch is for tenant {tenant!r}"
            )
        _check_record(f"[{i}]", record)
        payload = record_json(record)
        h = digest(tenant, payload)
        seen = prepared.get(record.id)
        if seen is not None:
            if seen[0] != h:
                raise ConflictError(record.id, "used twice in this batch with different payloads")
            in_batch_dups += 1
            continue
        prepared[record.id] = (h, payload, record)
    if not prepared:
        return RecordResult(0, in_batch_dups)
    ids = sorted(prepared)
    rows = [
        {
            "event_id": eid,
            "tenant": tenant,
            "at": prepared[eid][2].at,
            "payload_hash": prepared[eid][0],
            "payload": prepared[eid][1],
            "recorded_at": now,
        }
        for eid in ids
    ]
    if conn.dialect.name == "postgresql":
        returned = pgfast.execute(
            conn,
            _PG_INSERT_EVENTS,
            {
                "event_id": ids,
                "tenant": tenant,
                "at": [prepared[eid][2].at for eid in ids],
                "payload_hash": [prepared[eid][0] for eid in ids],
                "payload": [prepared[eid][1] for eid in ids],
                "recorded_at": now,
            },
        )
        inserted = {row[0] for row in returned}
    else:
        rows = [
            {
                "event_id": eid,
                "tenant": tenant,
                "at": prepared[eid][2].at,
                "payload_hash": prepared[eid][0],
                "payload": prepared[eid][1],
                "recorded_at": now,
            }
            for eid in ids
        ]
        stmt = (
            _insert(conn, usage_event)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(usage_event.c.event_id)
        )
        inserted = set(conn.execute(stmt, rows).scalars())
    missing = [eid for eid in ids if eid not in inserted]
    for start in range(0, len(missing), _IN_CHUNK):
        chunk = missing[start : start + _IN_CHUNK]
        existing = conn.execute(
            select(usage_event.c.event_id, usage_event.c.tenant, usage_event.c.payload_hash).where(
                usage_event.c.event_id.in_(chunk)
            )
        ).all()
        for eid, owner, h in existing:
            if owner != tenant:
                raise ConflictError(eid, "the event id is already used by another tenant")
            if h != prepared[eid][0]:
                raise ConflictError(eid, "recorded earlier with a different payload")
    acc: dict[rollup.RollupKey, Quantities] = {}
    for eid in ids:
        if eid in inserted:
            rollup.add_record(acc, tenant, prepared[eid][2])
    rollup.upsert(conn, acc)
    return RecordResult(len(inserted), len(missing) + in_batch_dups)


def _window_hash(w: UsageWindow) -> tuple[str, str]:
    payload = record_json(w.record)
    end = w.window_end.astimezone(UTC).isoformat()
    return digest(w.tenant, w.source, w.series, end, payload), payload


WindowKey = tuple[str, str, str, datetime]


def record_windows(
    conn: Connection,
    windows: Sequence[UsageWindow],
    checkpoints: Mapping[str, Mapping[str, Any]] | None,
    now: datetime,
) -> RecordResult:
    prepared: dict[WindowKey, tuple[str, str, UsageWindow]] = {}
    in_batch_dups = 0
    for i, w in enumerate(windows):
        for name in ("tenant", "source", "series"):
            if not getattr(w, name):
                raise InputError(f"[{i}].{name}", "required")
        if w.window_start.tzinfo is None or w.window_end.tzinfo is None:
            raise InputError(f"[{i}].windowStart", "timestamps must carry a time zone")
        if w.window_end <= w.window_start:
            raise InputError(f"[{i}].windowEnd", "must be after windowStart")
        if w.record.tenant is not None and w.record.tenant != w.tenant:
            raise InputError(f"[{i}].record.tenant", f"is not the window's tenant {w.tenant!r}")
        _check_record(f"[{i}].record", w.record)
        key: WindowKey = (w.tenant, w.source, w.series, w.window_start.astimezone(UTC))
        h, payload = _window_hash(w)
        seen = prepared.get(key)
        if seen is not None:
            if seen[0] != h:
                raise ConflictError(w.key, "used twice in this batch with different payloads")
            in_batch_dups += 1
            continue
        prepared[key] = (h, payload, w)
    keys = sorted(prepared)
    inserted: set[WindowKey] = set()
    if keys:
        rows = [
            {
                "tenant": k[0],
                "source": k[1],
                "series": k[2],
                "window_start": k[3],
                "window_end": prepared[k][2].window_end,
                "payload_hash": prepared[k][0],
                "payload": prepared[k][1],
                "recorded_at": now,
            }
            for k in keys
        ]
        pk = ["tenant", "source", "series", "window_start"]
        c = usage_window.c
        stmt = (
            _insert(conn, usage_window)
            .on_conflict_do_nothing(index_elements=pk)
            .returning(c.tenant, c.source, c.series, c.window_start)
        )
        inserted = {(r[0], r[1], r[2], r[3]) for r in conn.execute(stmt, rows)}
    missing = [k for k in keys if k not in inserted]
    c = usage_window.c
    for start in range(0, len(missing), _IN_CHUNK):
        chunk = missing[start : start + _IN_CHUNK]
        existing = conn.execute(
            select(c.tenant, c.source, c.series, c.window_start, c.payload_hash).where(
                tuple_(c.tenant, c.source, c.series, c.window_start).in_(chunk)
            )
        ).all()
        for t, s, ser, ws, h in existing:
            key = (t, s, ser, ws)
            if h != prepared[key][0]:
                raise ConflictError(
                    prepared[key][2].key, "recorded earlier with a different payload"
                )
    acc: dict[rollup.RollupKey, Quantities] = {}
    for k in keys:
        if k in inserted:
            rollup.add_record(acc, k[0], prepared[k][2].record)
    rollup.upsert(conn, acc)
    if checkpoints:
        set_checkpoints(conn, checkpoints, now)
    return RecordResult(len(inserted), len(missing) + in_batch_dups)


def set_checkpoints(
    conn: Connection, values: Mapping[str, Mapping[str, Any]], now: datetime
) -> None:
    rows = []
    for name in sorted(values):
        if not name:
            raise InputError("checkpoint", "name required")
        rows.append({"name": name, "value": json.dumps(dict(values[name]), sort_keys=True),
                     "updated_at": now})  # fmt: skip
    stmt = _insert(conn, checkpoint)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )
    conn.execute(stmt, rows)


def get_checkpoint(conn: Connection, name: str) -> dict[str, Any] | None:
    value = conn.execute(select(checkpoint.c.value).where(checkpoint.c.name == name)).scalar()
    if value is None:
        return None
    loaded: dict[str, Any] = json.loads(value)
    return loaded
