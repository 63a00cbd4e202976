"""Daily rollups: usage quantities summed per (tenant, booked period, usage period, UTC day,
usage key).

Booking: usage belongs to the period of its timestamp; it is *booked* (billed) in that
period, unless the tenant's statements are already finalised through it (`closed_through`
in billing_state): then it is late usage, booked into the first open period after
`closed_through`. Writers read `closed_through` in the transaction that writes the rollups
(PostgreSQL: `FOR SHARE`, so a period close, which holds the row `FOR UPDATE`, waits for
them and they wait for it), so usage is never booked into a period whose statement is
already stored.

Rows are aggregated per batch in Python and upserted in one statement, in key order (so
concurrent writers lock rollup rows in the same order and cannot deadlock each other).

The ingest hot path reduces each record to `Part` tuples (`parts`): the rollup key and at
most three integer amounts whose columns the usage kind decides (`KIND_COLUMNS`), plus the
custom decimal. Instant records are one part without any copying; only GPU windows can
straddle UTC days or periods and go through `split_by_day`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from datetime import UTC, date, datetime
from decimal import MAX_PREC, Context, Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.api.usage import (
    CustomUsage,
    GpuUsage,
    RequestUsage,
    StepUsage,
    TokenUsage,
    UsageRecord,
)
from kubemeter_operator.ledger import pgfast
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, billing_state, usage_rollup
from kubemeter_operator.usage.days import split_by_day
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import Quantities, UsageKey

RollupKey = tuple[str, str, str, date, UsageKey]
"""(tenant, booked period, usage period (both "YYYY-MM"), UTC day, usage key)."""

_KEY_COLUMNS = ("tenant", "booked", "period", "day", "kind", "model", "mig_profile", "name")
_QTY_FIELDS = tuple(f.name for f in fields(Quantities))


KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "gpu": ("allocated_ms", "active_ms"),
    "tokens": ("prompt_tokens", "completion_tokens", "cached_prompt_tokens"),
    "steps": ("steps",),
    "requests": ("requests",),
    "custom": (),
}
"""The rollup columns that a part's amounts (q1, q2, q3) go to, per usage kind."""

GroupKey = tuple[str, date, str, str, str, str]
"""(period "YYYY-MM", UTC day, kind, model, mig_profile, name): a rollup row of a tenant."""

Part = tuple[GroupKey, int, int, int, Decimal | None]
"""(rollup row, q1, q2, q3, custom): the amounts of one record (part) for one rollup row."""

Sums = dict[tuple[str, GroupKey], list[Any]]
"""(tenant, rollup row) -> [q1, q2, q3, custom]: a batch's parts summed per rollup row."""

_EXACT = Context(prec=MAX_PREC)
"""Decimal sums that never round."""


@lru_cache(maxsize=4096)
def _period_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def _instant(at: datetime) -> tuple[str, date]:
    day = at.astimezone(UTC).date()
    return _period_of(day), day


def parts(record: UsageRecord) -> list[Part]:
    """The rollup parts of a record: one per (period, UTC day) it touches."""
    if isinstance(record, TokenUsage):
        period, day = _instant(record.timestamp)
        key = (period, day, "tokens", record.model, "", "")
        q = (record.prompt_tokens, record.completion_tokens, record.cached_prompt_tokens)
        return [(key, *q, None)]
    if isinstance(record, GpuUsage):
        return [
            ((str(period), day, "gpu", p.model, p.mig_profile or "", ""),
             p.allocated_ms, p.active_ms, 0, None)
            for period, day, p in split_by_day(record)
            if isinstance(p, GpuUsage)
        ]  # fmt: skip
    if isinstance(record, StepUsage):
        period, day = _instant(record.timestamp)
        return [((period, day, "steps", record.model or "", "", ""), record.steps, 0, 0, None)]
    if isinstance(record, RequestUsage):
        period, day = _instant(record.timestamp)
        key = (period, day, "requests", record.model or "", "", "")
        return [(key, record.requests, 0, 0, None)]
    if isinstance(record, CustomUsage):
        period, day = _instant(record.timestamp)
        return [((period, day, "custom", "", "", record.name), 0, 0, 0, record.quantity)]
    raise TypeError(f"unknown usage record {type(record).__name__}")  # pragma: no cover


def add_parts(acc: Sums, tenant: str, record: UsageRecord) -> None:
    """Add a record's parts to the batch sums (plain ints; decimals added exactly)."""
    for group, q1, q2, q3, custom in parts(record):
        have = acc.get((tenant, group))
        if have is None:
            acc[(tenant, group)] = [q1, q2, q3, custom]
        else:
            have[0] += q1
            have[1] += q2
            have[2] += q3
            if custom is not None:
                have[3] = custom if have[3] is None else _EXACT.add(have[3], custom)


def quantities(acc: Sums, booking: Mapping[str, str]) -> dict[RollupKey, Quantities]:
    """The batch sums as rollup rows (one Quantities per row, not per record), each booked
    by `booking` (tenant -> closed_through, see `booked_period`)."""
    out: dict[RollupKey, Quantities] = {}
    for (tenant, (period, day, kind, model, mig, name)), (q1, q2, q3, custom) in acc.items():
        qty = Quantities(custom=custom if custom is not None else Decimal(0))
        for column, amount in zip(KIND_COLUMNS[kind], (q1, q2, q3), strict=False):
            setattr(qty, column, amount)
        booked = booked_period(booking.get(tenant, ""), period)
        key = (tenant, booked, period, day, UsageKey(kind, model, mig, name))
        have = out.get(key)
        if have is None:
            out[key] = qty
        else:
            have.add(qty)
    return out


def booked_period(closed_through: str, period: str) -> str:
    """The period that bills usage of `period` when statements are final through
    `closed_through` ("" when none is): the usage's own period while it is open, else the
    first period after `closed_through`."""
    if not closed_through or period > closed_through:
        return period
    return str(Period.parse(closed_through).next())


def closed_through(conn: Connection, tenants: Iterable[str]) -> dict[str, str]:
    """`closed_through` of each tenant ("" when it has no finalised statement), read under
    a share lock on PostgreSQL (see the module docstring); SQLite writers already hold the
    database's write lock."""
    names = sorted(set(tenants))
    if not names:
        return {}
    c = billing_state.c
    stmt = select(c.tenant, c.closed_through).where(c.tenant.in_(names))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(read=True)
    found = {str(t): str(ct) for t, ct in conn.execute(stmt)}
    return {t: found.get(t, "") for t in names}


def _row(rk: RollupKey, qty: Quantities) -> dict[str, Any]:
    tenant, booked, period, day, key = rk
    row: dict[str, Any] = {
        "tenant": tenant,
        "booked": booked,
        "period": period,
        "day": day,
        "kind": key.kind,
        "model": key.model,
        "mig_profile": key.mig_profile,
        "name": key.name,
    }
    for name in _QTY_FIELDS:
        row[name] = getattr(qty, name)
    return row


def upsert(conn: Connection, acc: dict[RollupKey, Quantities], table: Table = usage_rollup) -> None:
    """Add the aggregated quantities to the rollup rows (one statement, key order)."""
    if not acc:
        return
    if conn.dialect.name == "postgresql" and table is usage_rollup:
        _pg_upsert(conn, acc)
        return
    rows = [_row(rk, acc[rk]) for rk in sorted(acc)]
    if conn.dialect.name == "postgresql":
        pg = pg_insert(table)
        set_: dict[str, Any] = {c: table.c[c] + pg.excluded[c] for c in QUANTITY_COLUMNS}
        set_["custom"] = table.c.custom + pg.excluded.custom
        conn.execute(pg.on_conflict_do_update(index_elements=_KEY_COLUMNS, set_=set_), rows)
    else:
        lite = sqlite_insert(table)
        set_ = {c: table.c[c] + lite.excluded[c] for c in QUANTITY_COLUMNS}
        set_["custom"] = func.dec_add(table.c.custom, lite.excluded.custom)
        conn.execute(lite.on_conflict_do_update(index_elements=_KEY_COLUMNS, set_=set_), rows)


_PG_UPSERT = (
    "INSERT INTO usage_rollup (tenant, booked, period, day, kind, model, mig_profile, name, "
    + ", ".join(QUANTITY_COLUMNS)
    + ", custom) SELECT * FROM unnest(%(tenant)b::text[], %(booked)b::text[], %(period)b::text[], "
    "%(day)b::date[], %(kind)b::text[], %(model)b::text[], %(mig_profile)b::text[], "
    "%(name)b::text[], "
    + ", ".join(f"%({c})b::bigint[]" for c in QUANTITY_COLUMNS)
    + ", %(custom)b::numeric[]) ON CONFLICT (tenant, booked, period, day, kind, model, "
    "mig_profile, name) DO UPDATE SET "
    + ", ".join(f"{c} = usage_rollup.{c} + excluded.{c}" for c in (*QUANTITY_COLUMNS, "custom"))
)


def _pg_upsert(conn: Connection, acc: dict[RollupKey, Quantities]) -> None:
    """One fixed-shape statement (arrays + unnest): prepared once, no per-row SQL."""
    cols: dict[str, list[Any]] = {c: [] for c in (*_KEY_COLUMNS, *_QTY_FIELDS)}
    for rk in sorted(acc):
        tenant, booked, period, day, key = rk
        qty = acc[rk]
        cols["tenant"].append(tenant)
        cols["booked"].append(booked)
        cols["period"].append(period)
        cols["day"].append(day)
        cols["kind"].append(key.kind)
        cols["model"].append(key.model)
        cols["mig_profile"].append(key.mig_profile)
        cols["name"].append(key.name)
        for name in _QTY_FIELDS:
            cols[name].append(getattr(qty, name))
    pgfast.execute(conn, _PG_UPSERT, cols)
