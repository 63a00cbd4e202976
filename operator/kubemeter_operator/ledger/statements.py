"""Tenant terms per period, and finalised (immutable) period statements.

Terms (the price plan and discount a tenant had for a period) are snapshotted so a period
can be rated from the ledger alone; the latest `set_terms` for a period wins until the
period's statement is finalised. A finalised statement is stored whole (canonical JSON plus
its hash) and as line items; finalising it again with the same statement is a no-op, with a
different one a ConflictError.
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
from kubemeter_operator.ledger.schema import statement, statement_line, tenant_terms
from kubemeter_operator.ledger.usage import _insert
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage.periods import Period


@dataclass(frozen=True)
class Terms:
    plan: PricePlanSpec
    discount_percent: Decimal


def set_terms(
    conn: Connection,
    tenant: str,
    period: Period,
    plan: PricePlanSpec,
    discount_percent: Decimal,
    now: datetime,
) -> None:
    if not tenant:
        raise InputError("tenant", "required")
    if not Decimal(0) <= discount_percent <= Decimal(100) or exact_problem(discount_percent):
        raise InputError("discountPercent", "must be a decimal between 0 and 100")
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


def _body(stmt: Statement) -> str:
    return canonical_json(json.loads(stmt.to_json(indent=None)))


def finalize(conn: Connection, tenant: str, period: Period, stmt: Statement, now: datetime) -> bool:
    """Store the statement; True if stored now, False if the same one already was."""
    if not tenant:
        raise InputError("tenant", "required")
    if stmt.period != str(period):
        raise InputError("statement.period", f"is {stmt.period}, not {period}")
    body = _body(stmt)
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
            currency=stmt.currency,
            total=stmt.total,
            body=body,
            body_hash=body_hash,
            finalized_at=now,
        )
    )
    lines: list[dict[str, object]] = [
        {"kind": "meter", "meter": line.meter, "quantity": line.quantity, "amount": line.amount}
        for line in stmt.lines
    ]
    lines.append({"kind": "platformFee", "meter": None, "quantity": None,
                  "amount": stmt.platform_fee})  # fmt: skip
    lines.append({"kind": "discount", "meter": None, "quantity": stmt.discount_percent,
                  "amount": -stmt.discount})  # fmt: skip
    for line in lines:
        qty = line["quantity"]
        if isinstance(qty, Decimal) and exact_problem(qty):
            line["quantity"] = None  # audit detail only; the body keeps every digit
    conn.execute(
        statement_line.insert(),
        [
            {"tenant": tenant, "period": str(period), "line_no": i, **line}
            for i, line in enumerate(lines)
        ],
    )
    return True


def get(conn: Connection, tenant: str, period: Period) -> Statement | None:
    body = conn.execute(
        select(statement.c.body).where(
            statement.c.tenant == tenant, statement.c.period == str(period)
        )
    ).scalar()
    return None if body is None else Statement.model_validate_json(body)


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
