"""Daily rollups: usage quantities summed per (tenant, period, UTC day, usage key).

Rows are aggregated per batch in Python and upserted in one statement, in key order (so
concurrent writers lock rollup rows in the same order and cannot deadlock each other).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, date
from typing import Any

from sqlalchemy import Connection, Table, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.api.usage import GpuUsage, UsageRecord
from kubemeter_operator.ledger import pgfast
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, usage_rollup
from kubemeter_operator.rating.days import split_by_day
from kubemeter_operator.rating.periods import Period
from kubemeter_operator.rating.totals import Quantities, UsageKey, key_and_quantities

RollupKey = tuple[str, str, date, UsageKey]
"""(tenant, period "YYYY-MM", UTC day, usage key)."""

_KEY_COLUMNS = ("tenant", "period", "day", "kind", "model", "mig_profile", "name")
_QTY_FIELDS = tuple(f.name for f in fields(Quantities))


def add_record(acc: dict[RollupKey, Quantities], tenant: str, record: UsageRecord) -> None:
    if isinstance(record, GpuUsage):
        parts = split_by_day(record)
    else:  # instant records: one part (fast path of split_by_day)
        at = record.at.astimezone(UTC)
        parts = [(Period(at.year, at.month), at.date(), record)]
    for period, day, part in parts:
        key, qty = key_and_quantities(part)
        rk = (tenant, str(period), day, key)
        have = acc.get(rk)
        if have is None:
            acc[rk] = qty
        else:
            have.add(qty)


def aggregate(items: Iterable[tuple[str, UsageRecord]]) -> dict[RollupKey, Quantities]:
    acc: dict[RollupKey, Quantities] = {}
    for tenant, record in items:
        add_record(acc, tenant, record)
    return acc


def _row(rk: RollupKey, qty: Quantities) -> dict[str, Any]:
    tenant, period, day, key = rk
    row: dict[str, Any] = {
        "tenant": tenant,
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
    "INSERT INTO usage_rollup (tenant, period, day, kind, model, mig_profile, name, "
    + ", ".join(QUANTITY_COLUMNS)
    + ", custom) SELECT * FROM unnest(%(tenant)b::text[], %(period)b::text[], "
    "%(day)b::date[], %(kind)b::text[], %(model)b::text[], %(mig_profile)b::text[], "
    "%(name)b::text[], "
    + ", ".join(f"%({c})b::bigint[]" for c in QUANTITY_COLUMNS)
    + ", %(custom)b::numeric[]) ON CONFLICT (tenant, period, day, kind, model, "
    "mig_profile, name) DO UPDATE SET "
    + ", ".join(f"{c} = usage_rollup.{c} + excluded.{c}" for c in (*QUANTITY_COLUMNS, "custom"))
)


def _pg_upsert(conn: Connection, acc: dict[RollupKey, Quantities]) -> None:
    """One fixed-shape statement (arrays + unnest): prepared once, no per-row SQL."""
    cols: dict[str, list[Any]] = {c: [] for c in (*_KEY_COLUMNS, *_QTY_FIELDS)}
    for rk in sorted(acc):
        tenant, period, day, key = rk
        qty = acc[rk]
        cols["tenant"].append(tenant)
        cols["period"].append(period)
        cols["day"].append(day)
        cols["kind"].append(key.kind)
        cols["model"].append(key.model)
        cols["mig_profile"].append(key.mig_profile)
        cols["name"].append(key.name)
        for name in _QTY_FIELDS:
            cols[name].append(getattr(qty, name))
    pgfast.execute(conn, _PG_UPSERT, cols)
