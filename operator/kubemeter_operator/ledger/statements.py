"""Tenant terms per period, and finalised (immutable) period statements.

Terms (the price plan and discount a tenant had for a period) are snapshotted so a period
can be rated from the ledger alone; the latest `set_terms` for a period wins until the
period's statement is finalised. A finalised statement is stored whole (the billing layer's
canonical JSON plus its hash) and as line items; finalising it again with the same statement
is a no-op, with a different one a ConflictError. The ledger never rates: it stores what
`billing` hands it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, select

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger.codec import canonical_json, digest
from kubemeter_operator.ledger.columns import exact_problem
from kubemeter_operator.ledger.schema import (
    billing_state,
    statement,
    statement_line,
    tenant_terms,
)
from kubemeter_operator.ledger.usage import _insert
from kubemeter_operator.usage.periods import Period


@dataclass(frozen=True)
class Terms:
    plan: PricePlanSpec
    discount_percent: Decimal


@dataclass(frozen=True)
class StatementLineRecord:
    """One line item of a finalised statement, for audit queries (the body has it all)."""

    kind: str
    """"meter", "platformFee", "discount" (and later kinds the billing layer adds)."""
    meter: str | None
    quantity: Decimal | None
    amount: Decimal


@dataclass(frozen=True)
class StatementRecord:
    """A finalised statement as the ledger stores it: the billing layer's JSON body (kept
    whole, with its hash), its currency and total, and its line items."""

    currency: str
    total: Decimal
    body: str
    """Canonical JSON of the statement (what `get` returns)."""
    lines: tuple[StatementLineRecord, ...] = ()


def set_terms(
    conn: Connection,
    tenant: str,
    period: Period,
    plan: PricePlanSpec,
    discount_percent: Decimal,
    now: datetime,
) -> None:
    """Record the terms of an open period (the latest wins); a finalised period's terms are
    frozen (ConflictError)."""
    if not tenant:
        raise InputError("tenant", "required")
    if not Decimal(0) <= discount_percent <= Decimal(100) or exact_problem(discount_percent):
        raise InputError("discountPercent", "must be a decimal between 0 and 100")
    ensure_billing_state(conn, tenant, now)
    if is_final(conn, tenant, period):
        raise ConflictError(
            f"terms {tenant} {period}", "the period is finalised; its terms never change"
        )
    stmt = _insert(conn, tenant_terms).values(
        tenant=tenant,
        period=str(period),
        plan=canonical_json(plan.to_api()),
        discount_percent=discount_percent,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant", "period"],
        set_={
            "plan": stmt.excluded.plan,
            "discount_percent": stmt.excluded.discount_percent,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn.execute(stmt)


def get_terms(conn: Connection, tenant: str, period: Period) -> Terms | None:
    row = conn.execute(
        select(tenant_terms.c.plan, tenant_terms.c.discount_percent).where(
            tenant_terms.c.tenant == tenant, tenant_terms.c.period == str(period)
        )
    ).first()
    if row is None:
        return None
    return Terms(PricePlanSpec.model_validate(json.loads(row.plan)), row.discount_percent)


def finalize(
    conn: Connection, tenant: str, period: Period, record: StatementRecord, now: datetime
) -> bool:
    """Store the statement; True if stored now, False if the same one already was."""
    if not tenant:
        raise InputError("tenant", "required")
    body = canonical_json(json.loads(record.body))
    body_hash = digest(body)
    existing = conn.execute(
        select(statement.c.body_hash).where(
            statement.c.tenant == tenant, statement.c.period == str(period)
        )
    ).scalar()
    if existing is not None:
        if existing != body_hash:
            raise ConflictError(
                f"statement {tenant} {period}", "the period is closed; statements are immutable"
            )
        return False
    conn.execute(
        statement.insert().values(
            tenant=tenant,
            period=str(period),
            currency=record.currency,
            total=record.total,
            body=body,
            body_hash=body_hash,
            finalized_at=now,
        )
    )
    rows = []
    for i, line in enumerate(record.lines):
        qty = line.quantity
        if qty is not None and exact_problem(qty):
            qty = None  # audit detail only; the body keeps every digit
        rows.append({"tenant": tenant, "period": str(period), "line_no": i, "kind": line.kind,
                     "meter": line.meter, "quantity": qty, "amount": line.amount})  # fmt: skip
    if rows:
        conn.execute(statement_line.insert(), rows)
    return True


def get(conn: Connection, tenant: str, period: Period) -> str | None:
    """The body (canonical JSON) of the finalised statement, None while the period is open."""
    body: str | None = conn.execute(
        select(statement.c.body).where(
            statement.c.tenant == tenant, statement.c.period == str(period)
        )
    ).scalar()
    return body


def finalized_tenants(conn: Connection, period: Period) -> list[str]:
    return list(
        conn.execute(select(statement.c.tenant).where(statement.c.period == str(period))).scalars()
    )


def terms_tenants(conn: Connection, period: Period) -> list[str]:
    return list(
        conn.execute(
            select(tenant_terms.c.tenant).where(tenant_terms.c.period == str(period))
        ).scalars()
    )


def is_final(conn: Connection, tenant: str, period: Period) -> bool:
    found = conn.execute(
        select(statement.c.period).where(
            statement.c.tenant == tenant, statement.c.period == str(period)
        )
    ).first()
    return found is not None


def open_periods(conn: Connection, with_usage: set[tuple[str, str]]) -> list[tuple[str, Period]]:
    """(tenant, period) pairs that have terms or usage (`with_usage`: tenant, booked period)
    and no final statement, in (tenant, period) order."""
    pairs = set(with_usage)
    pairs.update((str(t), str(p)) for t, p in conn.execute(
        select(tenant_terms.c.tenant, tenant_terms.c.period)))  # fmt: skip
    final = {
        (str(t), str(p)) for t, p in conn.execute(select(statement.c.tenant, statement.c.period))
    }
    return sorted((t, Period.parse(p)) for t, p in pairs - final)


def ensure_billing_state(conn: Connection, tenant: str, now: datetime) -> None:
    """Create the tenant's billing_state row (closed through nothing) if it is missing."""
    conn.execute(
        _insert(conn, billing_state)
        .values(tenant=tenant, closed_through="", updated_at=now)
        .on_conflict_do_nothing(index_elements=["tenant"])
    )


def lock_billing_state(conn: Connection, tenant: str) -> Period | None:
    """The tenant's latest finalised period, with its billing_state row locked FOR UPDATE
    (PostgreSQL; SQLite's write transaction already excludes every other writer): usage
    writers of this tenant wait until this transaction ends. The row must exist
    (`ensure_billing_state`, committed before)."""
    stmt = select(billing_state.c.closed_through).where(billing_state.c.tenant == tenant)
    value = conn.execute(stmt.with_for_update()).scalar()
    if value is None:
        raise InputError("tenant", f"no billing state for {tenant!r} (ensure it first)")
    return Period.parse(value) if value else None


def set_closed_through(conn: Connection, tenant: str, period: Period, now: datetime) -> None:
    conn.execute(
        billing_state.update()
        .where(billing_state.c.tenant == tenant)
        .values(closed_through=str(period), updated_at=now)
    )


@dataclass(frozen=True)
class Finalised:
    tenant: str
    period: Period
    currency: str
    total: Decimal
    finalized_at: datetime


def finalised(conn: Connection, *, unannounced: bool = False) -> list[Finalised]:
    """Finalised statements (only those whose PeriodClosed Event has not been marked as
    posted, with `unannounced`), in (tenant, period) order."""
    c = statement.c
    query = select(c.tenant, c.period, c.currency, c.total, c.finalized_at)
    if unannounced:
        query = query.where(c.announced_at.is_(None))
    rows = conn.execute(query.order_by(c.tenant, c.period))
    return [Finalised(t, Period.parse(p), cur, tot, at) for t, p, cur, tot, at in rows]


def mark_announced(conn: Connection, tenant: str, period: Period, now: datetime) -> None:
    conn.execute(
        statement.update()
        .where(statement.c.tenant == tenant, statement.c.period == str(period))
        .values(announced_at=now)
    )
