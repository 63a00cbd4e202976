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
from kubemeter_operator.ledger import quarantine as held
from kubemeter_operator.ledger import rollup
from kubemeter_operator.ledger.codec import digest, record_json
from kubemeter_operator.ledger.columns import exact_problem
from kubemeter_operator.ledger.schema import (
    checkpoint,
    usage_window,
)

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
class MeteringCommit:
    """One metering window as the metering cycle commits it: its usage (one UsageWindow per
    series with usage), the deltas held in quarantine and the new checkpoint, guarded by
    compare-and-set on the checkpoint the cycle started from (`expect`, None: none yet)."""

    name: str
    """The checkpoint's name (the metering loop's)."""
    start: datetime
    end: datetime
    windows: Sequence[UsageWindow]
    checkpoint: Mapping[str, Any]
    expect: Mapping[str, Any] | None
    quarantine: Sequence[held.QuarantineEntry] = ()


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
    expect: Mapping[str, Mapping[str, Any] | None] | None = None,
    quarantine: Sequence[held.QuarantineEntry] = (),
) -> RecordResult:
    """Windows, their rollups, quarantined deltas (held, never billed: `ledger.quarantine`)
    and checkpoints, all in the caller's transaction; `expect` is checked first."""
    if expect:
        check_checkpoints(conn, expect)
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
    acc: rollup.Sums = {}
    for k in keys:
        if k in inserted:
            rollup.add_parts(acc, k[0], prepared[k][2].record)
    if acc:
        booking = rollup.closed_through(conn, {tenant for tenant, _ in acc})
        rollup.upsert(conn, rollup.quantities(acc, booking))
    if quarantine:
        held.hold(conn, quarantine, now)
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


def check_checkpoints(conn: Connection, expect: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Compare-and-set guard: each named checkpoint must still hold what the caller read
    (None: absent). The row is locked (PostgreSQL; SQLite writes are already exclusive),
    so another writer cannot move it before this transaction commits."""
    for name in sorted(expect):
        stmt = select(checkpoint.c.value).where(checkpoint.c.name == name).with_for_update()
        stored = conn.execute(stmt).scalar()
        current = json.loads(stored) if stored is not None else None
        expected = expect[name]
        wanted = dict(expected) if expected is not None else None
        if json.dumps(current, sort_keys=True) != json.dumps(wanted, sort_keys=True):
            raise ConflictError(
                f"checkpoint {name!r}", "it moved since it was read (another writer?)"
            )


def get_checkpoint(conn: Connection, name: str) -> dict[str, Any] | None:
    value = conn.execute(select(checkpoint.c.value).where(checkpoint.c.name == name)).scalar()
    if value is None:
        return None
    loaded: dict[str, Any] = json.loads(value)
    return loaded
