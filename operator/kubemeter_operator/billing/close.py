"""The period close: finalise every period that metering has covered, exactly once.

A period P of tenant T is *due* when T has terms or usage booked in P, P has no final
statement, and ``P.end <= metered_until - grace`` (``metered_until``: the end of the last
committed metering window, read from the ledger; ``grace``: default 1 h, for events that
arrive a little late). The ledger decides, never a Tenant's status: a restart days later,
or a replica that never saw the period, closes it all the same.

What is written, and in which transaction (``close_period``):

0. (its own transaction) the tenant's billing_state row is created if missing, and the
   period's terms are recorded if it has none (the Tenant's current plan, when known).
1. One transaction:
   a. lock T's billing_state row (PostgreSQL ``FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``):
      usage writers of T that are in flight finish first, new ones wait;
   b. if P already has a final statement, stop: another replica or an earlier run closed
      it (the result says ``stored=False``);
   c. rate P: its own usage plus the adjustments of late usage booked into it, at P's terms;
   d. store the statement and its lines, and set ``closed_through = P``;
   e. for a prepaid tenant, settle the wallet for P against the final total (the final
      burn, see ``billing.wallet``);
   then commit.

A crash anywhere in 1 rolls all of it back and the next cycle (of any replica) closes P
again from the same ledger rows; after the commit P is final, and every later attempt stops
at 1b. Two replicas closing at once serialise on the row lock; the second stops at 1b. Usage
for P that arrives while P closes waits at the lock, then sees ``closed_through = P`` and is
booked into the next open period as late usage: it is never dropped and never changes the
final invoice.

Periods of one tenant close in order: a period that cannot close (no terms, nor a plan to
take them from) holds back the later ones, so no usage is ever booked past it.

The ``PeriodClosed`` Event is posted after the commit by the controller, for every
statement the ledger has not marked as announced; it is marked after posting, so a crash
in between posts it again (at least once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.billing.statements import running_statement, to_record
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import LedgerTx, Settlement, Terms
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage import Period

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=1)


class CloseLedger(Protocol):
    """What the close needs from :class:`kubemeter_operator.ledger.Ledger`."""

    def open_periods(self) -> list[tuple[str, Period]]: ...

    def ensure_billing_state(self, tenant: str) -> None: ...

    def get_terms(self, tenant: str, period: Period) -> Terms | None: ...

    def set_terms(
        self, tenant: str, period: Period, plan: PricePlanSpec, discount_percent: Decimal = ...
    ) -> None: ...

    def transaction(self, what: str) -> AbstractContextManager[LedgerTx]: ...


@dataclass(frozen=True)
class Closed:
    """The outcome of closing one period."""

    tenant: str
    period: Period
    statement: Statement | None
    """The final statement (None when another run had stored it: read it from the ledger)."""
    stored: bool
    """True when this call finalised it; False when it already was final."""
    settlement: Settlement | None = None
    """The final wallet burn (prepaid tenants)."""
    wallet_error: str = ""
    """Why the wallet could not be settled (e.g. another currency); the period closed."""


@dataclass
class CloseReport:
    closed: list[Closed] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    """tenant -> why its due periods could not close (shown as a condition)."""


def due_periods(
    open_periods: Sequence[tuple[str, Period]], metered_until: datetime | None, grace: timedelta
) -> list[tuple[str, Period]]:
    """The open periods whose end metering has covered, plus the grace, in order."""
    if metered_until is None:
        return []
    cutoff = metered_until - grace
    return [(t, p) for t, p in open_periods if p.end <= cutoff]


def close_period(
    ledger: CloseLedger,
    tenant: str,
    period: Period,
    *,
    prepaid: bool,
    fallback_terms: Terms | None = None,
) -> Closed:
    """Finalise `period` of `tenant` exactly once (see the module docstring)."""
    ledger.ensure_billing_state(tenant)
    if ledger.get_terms(tenant, period) is None:
        if fallback_terms is None:
            raise InputError(
                "terms",
                f"period {period} of tenant {tenant!r} has usage but no terms recorded, and "
                "no PricePlan to take them from; record them with `kubemeter ledger terms`",
            )
        ledger.set_terms(tenant, period, fallback_terms.plan, fallback_terms.discount_percent)
    with ledger.transaction("close period") as tx:
        tx.lock_billing_state(tenant)
        if tx.get_statement(tenant, period) is not None:
            return Closed(tenant, period, None, stored=False)
        statement = running_statement(tx, tenant, period)
        tx.finalize_statement(tenant, period, to_record(statement))
        tx.set_closed_through(tenant, period)
        settlement: Settlement | None = None
        wallet_error = ""
        if prepaid:
            wallet = tx.wallet(tenant)
            if wallet.currency not in (None, statement.currency):
                wallet_error = (
                    f"the wallet is in {wallet.currency}; the {period} invoice is in "
                    f"{statement.currency} (kubemeter never converts currencies)"
                )
            else:
                due = max(statement.total, Decimal(0))
                settlement = tx.settle(tenant, period, due, statement.currency, final=True)
    return Closed(tenant, period, statement, True, settlement, wallet_error)


def close_due(
    ledger: CloseLedger,
    metered_until: datetime | None,
    *,
    grace: timedelta = DEFAULT_GRACE,
    prepaid: Callable[[str], bool] = lambda _tenant: False,
    terms_for: Mapping[str, Terms] | None = None,
    skip: Callable[[str], bool] = lambda _tenant: False,
) -> CloseReport:
    """Close every due period, oldest first per tenant. One tenant's failure (logged and
    reported in `blocked`) never stops the others'; ledger outages (TransientError) do."""
    report = CloseReport()
    for tenant, period in due_periods(ledger.open_periods(), metered_until, grace):
        if tenant in report.blocked or skip(tenant):
            continue
        try:
            closed = close_period(
                ledger,
                tenant,
                period,
                prepaid=prepaid(tenant),
                fallback_terms=(terms_for or {}).get(tenant),
            )
        except InputError as exc:
            log.warning("tenant %s: period %s not closed: %s", tenant, period, exc)
            report.blocked[tenant] = f"period {period} cannot be finalised: {exc.problem}"
            continue
        if closed.stored:
            log.info(
                "tenant %s: period %s finalised, total %s %s",
                tenant,
                period,
                closed.statement.total if closed.statement else "?",
                closed.statement.currency if closed.statement else "",
            )
        report.closed.append(closed)
    return report
