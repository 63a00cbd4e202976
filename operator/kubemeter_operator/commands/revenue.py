"""`kubemeter revenue`: recognised revenue per tenant per UTC day, from the ledger.

    kubemeter revenue --from 2026-11-01 --to 2026-11-30 [--db URL] [-o csv|json|yaml]
                      [--tenant T]

Usage revenue is recognised on the day it was consumed (each statement line allocated over
the days in proportion to that day's metered quantity), the platform fee evenly over the
period's days, the discount in proportion to each day's revenue before discount, late
usage of earlier periods (adjustments) evenly over the days of the period billing it; all in
whole minor units with largest-remainder rounding, so a period's days sum exactly to its
statement total. Closed periods use their finalised statement, open ones the running
statement. Both dates are inclusive. The ledger is --db, else $KUBEMETER_DB, else
sqlite:///kubemeter-ledger.db.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import date
from typing import Any

from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.api.usage import FIRST_YEAR, LAST_YEAR
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import resolve_url
from kubemeter_operator.rating.revenue import recognise
from kubemeter_operator.usage.periods import Period

COLUMNS = ("date", "tenant", "period", "status", "currency", "usage", "platformFee",
           "discount", "adjustments", "revenue")  # fmt: skip


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers, "revenue", "recognised revenue per tenant per day (CSV, JSON or YAML)", __doc__
    )
    parser.add_argument("--from", dest="from_day", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="to_day", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--tenant", help="only this tenant")
    parser.add_argument("--db", metavar="URL")
    out.add_output(parser, choices=("csv", "json", "yaml"), default="csv", dest="format",
                   aliases=("--format",))  # fmt: skip
    parser.set_defaults(run=run)


def _day(text: str, flag: str) -> date:
    """A YYYY-MM-DD flag in the billable years; else an InputError naming `flag`."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InputError(flag, f"{text!r} is not a date of the form YYYY-MM-DD") from None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise InputError(flag, f"{text!r} is outside the years {FIRST_YEAR}..{LAST_YEAR}")
    return day


def revenue_rows(
    ledger: Ledger, from_day: date, to_day: date, tenant: str | None = None
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    period = Period(from_day.year, from_day.month)
    last = Period(to_day.year, to_day.month)
    while period <= last:
        days = period.days
        names = [tenant] if tenant else ledger.tenants(period)
        daily = ledger.daily_totals(tenant, days[0], days[-1])
        for name in names:
            final = billing_statements.final_statement(ledger, name, period)
            terms = ledger.get_terms(name, period)
            if final is None and terms is None:
                if daily.get(name):
                    print(f"kubemeter revenue: warning: {name} has usage in {period} but no "
                          "terms or statement; skipped", file=sys.stderr)  # fmt: skip
                continue
            statement = final or billing_statements.running_statement(ledger, name, period)
            status = "final" if final is not None else "running"
            for day in recognise(statement, terms.plan if terms else None, daily.get(name, {})):
                if from_day <= day.day <= to_day:
                    rows.append({
                        "date": day.day.isoformat(), "tenant": name, "period": str(period),
                        "status": status, "currency": statement.currency,
                        "usage": format_decimal(day.usage),
                        "platformFee": format_decimal(day.platform_fee),
                        "discount": format_decimal(day.discount),
                        "adjustments": format_decimal(day.adjustments),
                        "revenue": format_decimal(day.revenue),
                    })  # fmt: skip
        period = period.next()
    rows.sort(key=lambda r: (r["date"], r["tenant"]))
    return rows


def run(args: argparse.Namespace) -> int:
    from_day = _day(args.from_day, "--from")
    to_day = _day(args.to_day, "--to")
    if to_day < from_day:
        raise InputError("--to", "must not be before --from")
    with Ledger.open(resolve_url(args.db)) as ledger:
        rows = revenue_rows(ledger, from_day, to_day, args.tenant)
    if args.format in ("json", "yaml"):
        out.emit(rows, args.format)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    return 0
