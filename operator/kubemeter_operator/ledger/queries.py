"""Usage totals read from the daily rollups (never from the usage rows).

A period's own usage is what is booked in it and belongs to it (`booked = period = P`);
late usage booked into P belongs to an earlier, already finalised period (`booked = P`,
`period < P`). See `rollup` for how usage is booked."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Select, select

from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.ledger.codec import parse_record
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, usage_rollup, usage_window
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import Quantities, UsageKey, UsageTotals

_R = usage_rollup.c
_COLUMNS = (_R.tenant, _R.day, _R.kind, _R.model, _R.mig_profile, _R.name,
            *(_R[c] for c in QUANTITY_COLUMNS), _R.custom)  # fmt: skip


def _quantities(row: Any) -> Quantities:
    ints = {name: int(row[6 + i]) for i, name in enumerate(QUANTITY_COLUMNS)}
    return Quantities(**ints, custom=row[6 + len(QUANTITY_COLUMNS)] or Decimal(0))


def _add(totals: UsageTotals, row: Any) -> None:
    key = UsageKey(row[2], row[3], row[4], row[5])
    have = totals.get(key)
    if have is None:
        totals[key] = _quantities(row)
    else:
        have.add(_quantities(row))


def period_totals(conn: Connection, tenant: str, period: Period) -> UsageTotals:
    """The usage of `period` booked in `period` (what its statement rates, adjustments aside)."""
    p = str(period)
    totals: UsageTotals = {}
    query = select(*_COLUMNS).where(_R.tenant == tenant, _R.booked == p, _R.period == p)
    for row in conn.execute(query):
        _add(totals, row)
    return totals


def all_period_totals(conn: Connection, period: Period) -> dict[str, UsageTotals]:
    p = str(period)
    out: dict[str, UsageTotals] = {}
    for row in conn.execute(select(*_COLUMNS).where(_R.booked == p, _R.period == p)):
        _add(out.setdefault(row[0], {}), row)
    return out


def late_totals(conn: Connection, tenant: str, booked: Period) -> dict[Period, UsageTotals]:
    """Late usage booked into `booked`, per the (earlier, finalised) period it belongs to."""
    out: dict[Period, UsageTotals] = {}
    query = select(_R.period, *_COLUMNS).where(
        _R.tenant == tenant, _R.booked == str(booked), _R.period != str(booked)
    )
    for row in conn.execute(query):
        _add(out.setdefault(Period.parse(row[0]), {}), row[1:])
    return out


def booked_before(conn: Connection, tenant: str, period: Period, before: Period) -> UsageTotals:
    """Usage of `period` booked in any period before `before` (its own statement and the
    adjustments of the periods between): what an adjustment booked in `before` builds on."""
    totals: UsageTotals = {}
    query = select(*_COLUMNS).where(
        _R.tenant == tenant, _R.period == str(period), _R.booked < str(before)
    )
    for row in conn.execute(query):
        _add(totals, row)
    return totals


def daily_totals(
    conn: Connection, tenant: str | None, from_day: date, to_day: date
) -> dict[str, dict[date, UsageTotals]]:
    """Totals per tenant per UTC day, for days in [from_day, to_day] (inclusive); late usage
    (billed as an adjustment of a later period) is not in them."""
    query: Select[Any] = select(*_COLUMNS).where(
        _R.day >= from_day, _R.day <= to_day, _R.booked == _R.period
    )
    if tenant is not None:
        query = query.where(_R.tenant == tenant)
    out: dict[str, dict[date, UsageTotals]] = {}
    for row in conn.execute(query):
        _add(out.setdefault(row[0], {}).setdefault(row[1], {}), row)
    return out


def tenants_with_usage(conn: Connection, period: Period) -> list[str]:
    """Tenants with usage booked in `period` (its own or late usage of earlier ones)."""
    return sorted(
        conn.execute(select(_R.tenant).where(_R.booked == str(period)).distinct()).scalars()
    )


def periods_with_usage(conn: Connection) -> set[tuple[str, str]]:
    """Every (tenant, booked period) with usage."""
    query = select(_R.tenant, _R.booked).distinct()
    return {(str(t), str(p)) for t, p in conn.execute(query)}


def window_records(conn: Connection, tenant: str, period: Period) -> list[UsageRecord]:
    """The usage records of the metering windows of `tenant` starting in `period`."""
    c = usage_window.c
    stmt = (
        select(c.payload)
        .where(c.tenant == tenant)
        .where(c.window_start >= period.start)
        .where(c.window_start < period.end)
        .order_by(c.window_start)
    )
    return [parse_record(payload) for (payload,) in conn.execute(stmt)]
