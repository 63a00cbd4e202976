"""Statements from the ledger: the running one of an open period, the final one of a closed
period, and the record the ledger stores when a period is finalised.

    statement, final = billing.statements.statement(ledger, "acme", Period.parse("2026-11"))

A running statement rates the period's own usage with the terms (price plan and discount)
the ledger recorded for that period, plus an adjustment for each earlier, finalised period
whose late usage is booked into it, rated at that period's terms
(`rating.adjustments.late_usage_adjustment`). A final statement is the body the ledger
stored at close, parsed back; it never changes.

Terms rule: the terms recorded last for an open period apply to the whole period (a plan or
discount edit mid-period reprices the whole open period); the terms in force at close are
frozen with the final statement and never change.
"""

from __future__ import annotations

import json
from typing import Protocol

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import StatementLineRecord, StatementRecord, Terms
from kubemeter_operator.rating import rate
from kubemeter_operator.rating.adjustments import late_usage_adjustment, with_adjustments
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage import Period, UsageTotals


class StatementLedger(Protocol):
    """What statements need from :class:`kubemeter_operator.ledger.Ledger`."""

    def get_terms(self, tenant: str, period: Period) -> Terms | None: ...

    def period_totals(self, tenant: str, period: Period) -> UsageTotals: ...

    def get_statement(self, tenant: str, period: Period) -> str | None: ...

    def late_totals(self, tenant: str, period: Period) -> dict[Period, UsageTotals]: ...

    def booked_before(self, tenant: str, period: Period, before: Period) -> UsageTotals: ...


def terms_of(ledger: StatementLedger, tenant: str, period: Period) -> Terms:
    terms = ledger.get_terms(tenant, period)
    if terms is None:
        raise InputError(
            "period",
            f"no terms (price plan) recorded for tenant {tenant!r} in {period}; "
            "the operator records them, or use `kubemeter ledger terms`",
        )
    return terms


def running_statement(ledger: StatementLedger, tenant: str, period: Period) -> Statement:
    """Rate the period's usage with the tenant's recorded terms (InputError: none), with
    the adjustments of the late usage booked into it."""
    terms = terms_of(ledger, tenant, period)
    totals = ledger.period_totals(tenant, period)
    base = rate(terms.plan, totals, period=period, discount_percent=terms.discount_percent)
    adjustments = []
    for old, late in sorted(ledger.late_totals(tenant, period).items()):
        old_terms = ledger.get_terms(tenant, old) or terms
        prior = ledger.booked_before(tenant, old, period)
        adjustments.append(
            late_usage_adjustment(
                old_terms.plan, old_terms.discount_percent, old, prior=prior, late=late
            )
        )
    return with_adjustments(base, adjustments)


def final_statement(ledger: StatementLedger, tenant: str, period: Period) -> Statement | None:
    """The finalised statement of a closed period (None while it is open)."""
    body = ledger.get_statement(tenant, period)
    return None if body is None else Statement.model_validate_json(body)


def statement(ledger: StatementLedger, tenant: str, period: Period) -> tuple[Statement, bool]:
    """The final statement if the period is closed, else the running one: (it, final)."""
    final = final_statement(ledger, tenant, period)
    if final is not None:
        return final, True
    return running_statement(ledger, tenant, period), False


def to_record(stmt: Statement) -> StatementRecord:
    """What the ledger stores for a finalised statement: its JSON and its line items."""
    lines = [StatementLineRecord("meter", line.meter, line.quantity, line.amount)
             for line in stmt.lines]  # fmt: skip
    lines.append(StatementLineRecord("platformFee", None, None, stmt.platform_fee))
    lines.append(StatementLineRecord("discount", None, stmt.discount_percent, -stmt.discount))
    lines.extend(
        StatementLineRecord(f"late:{adj.period}", line.meter, line.quantity, line.amount)
        for adj in stmt.adjustments
        for line in adj.lines
    )
    lines.extend(
        StatementLineRecord(f"lateDisc:{adj.period}", None, None, -adj.discount)
        for adj in stmt.adjustments
        if adj.discount
    )
    body = json.dumps(json.loads(stmt.to_json(indent=None)), sort_keys=True)
    return StatementRecord(stmt.currency, stmt.total, body, tuple(lines))


class FinalizingLedger(StatementLedger, Protocol):
    def finalize_statement(self, tenant: str, period: Period, record: StatementRecord) -> bool: ...


def finalize(ledger: FinalizingLedger, tenant: str, period: Period, stmt: Statement) -> bool:
    """Store `stmt` as the period's final statement (True: now; False: it already was)."""
    if stmt.period != str(period):
        raise InputError("statement.period", f"is {stmt.period}, not {period}")
    return ledger.finalize_statement(tenant, period, to_record(stmt))
