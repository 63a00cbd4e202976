"""Recording usage events idempotently, by (tenant, event id).

One batch is one transaction: the events and their daily rollups commit together or not at
all. An id recorded again with the same canonical payload is a duplicate (a no-op); with a
different payload it is a ConflictError naming the id, and nothing of the batch is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from hashlib import sha256
from typing import Any

import psycopg
from sqlalchemy import Connection, select

from kubemeter_operator.api.usage import CustomUsage, UsageRecord
from kubemeter_operator.errors import ConflictError, InputError, TransientError
from kubemeter_operator.ledger import pgfast, rollup
from kubemeter_operator.ledger.codec import record_json
from kubemeter_operator.ledger.columns import plain
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, usage_event
from kubemeter_operator.ledger.usage import _IN_CHUNK, RecordResult, _check_record, _insert

_ROLLUP_SET = ", ".join(
    f"{c} = usage_rollup.{c} + excluded.{c}" for c in (*QUANTITY_COLUMNS, "custom")
)


def _amount(column: str) -> str:
    """SQL for a rollup column from a group's summed amounts q1..q3 (see KIND_COLUMNS)."""
    whens = " ".join(
        f"WHEN '{kind}' THEN s.q{i + 1}"
        for kind, columns in rollup.KIND_COLUMNS.items()
        for i, c in enumerate(columns)
        if c == column
    )
    return f"(CASE g.kind {whens} ELSE 0 END)::bigint"


_PG_RECORD_EVENTS = f"""
WITH ev AS (
    SELECT * FROM unnest(string_to_array(%(event_id)b::text, chr(30)),
                         %(at)b::timestamptz[],
                         string_to_array(%(payload_hash)b::text, chr(30)),
                         string_to_array(%(payload)b::text, chr(30)))
        WITH ORDINALITY AS e(event_id, at, payload_hash, payload, ord)
), ins AS (
    INSERT INTO usage_event AS u (event_id, tenant, at, payload_hash, payload, recorded_at)
    SELECT ev.event_id, %(tenant)b::text, ev.at, ev.payload_hash, ev.payload,
           %(recorded_at)b::timestamptz
    FROM ev ORDER BY ev.ord
    ON CONFLICT (tenant, event_id) DO UPDATE SET tenant = u.tenant
        WHERE u.payload_hash <> excluded.payload_hash
    RETURNING u.event_id, u.tenant, u.payload_hash
), res AS (
    SELECT ev.ord, ins.event_id, ins.tenant, ins.payload_hash,
           ins.payload_hash = ev.payload_hash AS new
    FROM ins JOIN ev ON ev.event_id = ins.event_id
), part AS (
    SELECT * FROM unnest(string_to_array(%(p_event)b::text, ',')::int4[],
                         string_to_array(%(p_group)b::text, ',')::int4[],
                         string_to_array(%(q1)b::text, ',')::int8[],
                         string_to_array(%(q2)b::text, ',')::int8[],
                         string_to_array(%(q3)b::text, ',')::int8[],
                         string_to_array(%(custom)b::text, ',', ''))
        AS p(ev, grp, q1, q2, q3, custom)
), tb AS (
    SELECT closed_through AS ct FROM billing_state WHERE tenant = %(tenant)b::text FOR SHARE
), g AS (
    SELECT g0.*,
           CASE WHEN coalesce((SELECT ct FROM tb), '') = '' OR g0.period > (SELECT ct FROM tb)
                THEN g0.period
                ELSE to_char(to_date((SELECT ct FROM tb) || '-01', 'YYYY-MM-DD')
                             + interval '1 month', 'YYYY-MM')
           END AS booked
    FROM unnest(%(g_period)b::text[], %(g_day)b::date[], %(g_kind)b::text[],
                %(g_model)b::text[], %(g_mig)b::text[], %(g_name)b::text[])
        WITH ORDINALITY AS g0(period, day, kind, model, mig_profile, name, grp)
), s AS (
    SELECT part.grp, sum(part.q1) AS q1, sum(part.q2) AS q2, sum(part.q3) AS q3,
           sum(part.custom::numeric) AS custom
    FROM part JOIN res ON res.ord = part.ev AND res.new
    GROUP BY part.grp
), roll AS (
    INSERT INTO usage_rollup (tenant, booked, period, day, kind, model, mig_profile, name,
                              {", ".join(QUANTITY_COLUMNS)}, custom)
    SELECT %(tenant)b::text, g.booked, g.period, g.day, g.kind, g.model, g.mig_profile, g.name,
           {", ".join(_amount(c) for c in QUANTITY_COLUMNS)}, coalesce(s.custom, 0)
    FROM s JOIN g ON g.grp = s.grp
    ORDER BY g.grp
    ON CONFLICT (tenant, booked, period, day, kind, model, mig_profile, name)
    DO UPDATE SET {_ROLLUP_SET}
)
SELECT NULL::text, NULL::text, NULL::text,
       count(*) FILTER (WHERE res.new)
       / (NOT %(fail_on_conflict)b::bool OR count(*) FILTER (WHERE NOT res.new) = 0)::int
FROM res
UNION ALL
SELECT res.event_id, res.tenant, res.payload_hash, NULL FROM res WHERE NOT res.new
"""
"""PostgreSQL: a whole batch in one fixed-shape statement (arrays + unnest, prepared once
per connection, one round trip), with no plan choice that depends on table sizes.

Long columns travel as one text each, split by the server (`string_to_array`): ids, hashes
and payloads joined with ASCII RS (chr(30), which event ids cannot hold and canonical JSON
escapes), integers with commas. Dumping 100-element lists element by element costs the
client more than the whole split costs the server.

It inserts the new events; an id the tenant already recorded is left as it is, except that
one with another payload hash is (harmlessly) "updated" so that it is returned. Ids are the
tenant's own: another tenant's `req-1` is another event. Exactly
the events inserted now are added to the daily rollups (each event's parts, summed per
rollup row, upserted in key order). The result: the number inserted, plus the conflicting
rows, if any; then the caller raises and its transaction rolls all of it back. ON CONFLICT
sees the latest committed row, also one committed after the statement began. The rows are
booked (`rollup.booked_period`) against the tenant's billing_state read `FOR SHARE`: a
period close in progress holds that row `FOR UPDATE`, so the batch waits for it and then
books into the next open period what the close has just finalised.

With `fail_on_conflict` the statement itself fails (division by zero) instead of
returning conflicting rows: then it can run as a transaction of its own
(`pgfast.execute_alone`), and the conflicting id is looked up afterwards."""


_RS = chr(30)
"""The separator of joined text parameters (ASCII record separator)."""


def _prepare_events(
    tenant: str, records: Sequence[UsageRecord]
) -> tuple[dict[str, tuple[str, str, UsageRecord]], int]:
    """Validate a batch: id -> (payload hash, canonical payload, record), in-batch dups."""
    if not tenant:
        raise InputError("tenant", "required")
    prepared: dict[str, tuple[str, str, UsageRecord]] = {}
    in_batch_dups = 0
    prefix = tenant + "\x00"
    for i, record in enumerate(records):
        eid = record.id
        if eid is None:
            raise InputError(f"[{i}].id", "required: the event id is the idempotency key")
        if record.tenant is not None and record.tenant != tenant:
            raise InputError(
                f"[{i}].tenant", f"is {record.tenant!r} but the batch is for tenant {tenant!r}"
            )
        if isinstance(record, CustomUsage):
            _check_record(f"[{i}]", record)
        payload = record_json(record)
        h = sha256((prefix + payload + "\x00").encode()).hexdigest()  # digest(tenant, payload)
        seen = prepared.get(eid)
        if seen is not None:
            if seen[0] != h:
                raise ConflictError(eid, "used twice in this batch with different payloads")
            in_batch_dups += 1
            continue
        prepared[eid] = (h, payload, record)
    return prepared, in_batch_dups


def _check_existing(
    tenant: str, prepared: dict[str, tuple[str, str, UsageRecord]], rows: Any
) -> None:
    for eid, owner, h in rows:
        if owner == tenant and h != prepared[eid][0]:
            raise ConflictError(eid, "recorded earlier with a different payload")


def _select_existing(conn: Connection, tenant: str, ids: list[str]) -> list[tuple[str, str, str]]:
    c = usage_event.c
    found: list[tuple[str, str, str]] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        stmt = select(c.event_id, c.tenant, c.payload_hash).where(
            c.tenant == tenant, c.event_id.in_(chunk)
        )
        found.extend((r[0], r[1], r[2]) for r in conn.execute(stmt))
    return found


def record_events(
    conn: Connection, tenant: str, records: Sequence[UsageRecord], now: datetime
) -> RecordResult:
    prepared, in_batch_dups = _prepare_events(tenant, records)
    if not prepared:
        return RecordResult(0, in_batch_dups)
    ids = sorted(prepared)
    if conn.dialect.name == "postgresql":
        n = _pg_record_events(conn, tenant, ids, prepared, now)
        return RecordResult(n, len(ids) - n + in_batch_dups)
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
        .on_conflict_do_nothing(index_elements=["tenant", "event_id"])
        .returning(usage_event.c.event_id)
    )
    inserted = set(conn.execute(stmt, rows).scalars())
    missing = [eid for eid in ids if eid not in inserted]
    if missing:
        _check_existing(tenant, prepared, _select_existing(conn, tenant, missing))
    acc: rollup.Sums = {}
    for eid in ids:
        if eid in inserted:
            rollup.add_parts(acc, tenant, prepared[eid][2])
    if acc:
        rollup.upsert(conn, rollup.quantities(acc, rollup.closed_through(conn, [tenant])))
    return RecordResult(len(inserted), len(missing) + in_batch_dups)


def _pg_record_events(
    conn: Connection,
    tenant: str,
    ids: list[str],
    prepared: dict[str, tuple[str, str, UsageRecord]],
    now: datetime,
) -> int:
    """The PostgreSQL batch: one statement; returns how many events were inserted."""
    ats: list[datetime] = []
    hashes: list[str] = []
    payloads: list[str] = []
    p_event: list[int] = []
    p_group: list[rollup.GroupKey] = []
    q1: list[int] = []
    q2: list[int] = []
    q3: list[int] = []
    custom: list[str] = []
    for ordinal, eid in enumerate(ids, 1):
        h, payload, record = prepared[eid]
        ats.append(record.at)
        hashes.append(h)
        payloads.append(payload)
        for group, a1, a2, a3, c in rollup.parts(record):
            p_event.append(ordinal)
            p_group.append(group)
            q1.append(a1)
            q2.append(a2)
            q3.append(a3)
            custom.append("" if c is None else plain(c))
    groups = sorted(set(p_group))  # key order: concurrent writers lock rows alike
    index = {g: i for i, g in enumerate(groups, 1)}
    joined_ids = _RS.join(ids)
    joined_payloads = _RS.join(payloads)
    if joined_ids.count(_RS) + 1 != len(ids) or joined_payloads.count(_RS) + 1 != len(ids):
        raise InputError("id", "event ids and payloads cannot contain control characters")
    params: dict[str, Any] = {
        "tenant": tenant,
        "recorded_at": now,
        "event_id": joined_ids,
        "at": ats,
        "payload_hash": _RS.join(hashes),
        "payload": joined_payloads,
        "p_event": ",".join(map(str, p_event)),
        "p_group": ",".join([str(index[g]) for g in p_group]),
        "q1": ",".join(map(str, q1)),
        "q2": ",".join(map(str, q2)),
        "q3": ",".join(map(str, q3)),
        "custom": ",".join(custom),
        "g_period": [g[0] for g in groups],
        "g_day": [g[1] for g in groups],
        "g_kind": [g[2] for g in groups],
        "g_model": [g[3] for g in groups],
        "g_mig": [g[4] for g in groups],
        "g_name": [g[5] for g in groups],
        "fail_on_conflict": True,
    }
    try:
        rows = pgfast.execute_alone(conn, _PG_RECORD_EVENTS, params)
    except psycopg.errors.DivisionByZero:  # a conflict: nothing was written
        _check_existing(tenant, prepared, sorted(_select_existing(conn, tenant, ids)))
        raise TransientError(  # pragma: no cover - the conflicting row cannot vanish
            "ledger record events: a conflicting event id was not found; retry"
        ) from None
    if rows is None:  # inside a transaction that is already under way
        params["fail_on_conflict"] = False
        rows = pgfast.execute(conn, _PG_RECORD_EVENTS, params)
    inserted = 0
    conflicts: list[tuple[str, str, str]] = []
    for eid, owner, h, n in rows:
        if eid is None:
            inserted = int(n)
        else:
            conflicts.append((eid, owner, h))
    _check_existing(tenant, prepared, sorted(conflicts))
    return inserted
