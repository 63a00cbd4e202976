"""`kubemeter invoice`: a tenant's statement for a period, from the ledger.

    kubemeter invoice TENANT --period YYYY-MM [--db URL] [-o table|json|yaml|csv]

Prints the finalised statement if the period is closed, else the running statement (the
period's usage so far rated with the tenant's recorded terms), marked as such. The ledger is
--db, else $KUBEMETER_DB, else sqlite:///kubemeter-ledger.db in the current directory
(a file path or a SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB).
JSON and YAML are exact (amounts as decimal strings). CSV has one row per line item (meters,
platform fee, discount, late usage of earlier periods as `lateUsage:YYYY-MM` rows, total).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.commands.quote import render_table
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import resolve_url
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage.periods import Period, PeriodError


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers, "invoice", "print a tenant's period statement from the ledger", __doc__
    )
    parser.add_argument("tenant", metavar="TENANT")
    parser.add_argument("--period", required=True, metavar="YYYY-MM")
    parser.add_argument("--db", metavar="URL", help="ledger URL (default: $KUBEMETER_DB or "
                        "sqlite:///kubemeter-ledger.db)")  # fmt: skip
    out.add_output(parser, choices=("table", "json", "yaml", "csv"), dest="format",
                   aliases=("--format",))  # fmt: skip
    parser.set_defaults(run=run)


def parse_period(text: str, flag: str = "--period") -> Period:
    """A YYYY-MM flag in the billable years; else an InputError naming `flag`."""
    try:
        return Period.parse(text)
    except PeriodError as exc:
        raise InputError(flag, exc.problem) from None


def render_csv(statement: Statement, tenant: str, final: bool) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    status = "final" if final else "running"
    w.writerow(["tenant", "period", "status", "currency", "item", "meter", "unit", "quantity",
                "billed_quantity", "included", "billable", "amount"])  # fmt: skip
    head = [tenant, statement.period, status, statement.currency]
    for line in statement.lines:
        w.writerow([*head, "meter", line.meter, line.unit.value, format_decimal(line.quantity),
                    format_decimal(line.billed_quantity), format_decimal(line.included),
                    format_decimal(line.billable), format_decimal(line.amount)])  # fmt: skip
    w.writerow([*head, "platformFee", "", "", "", "", "", "",
                format_decimal(statement.platform_fee)])  # fmt: skip
    w.writerow([*head, "subtotal", "", "", "", "", "", "", format_decimal(statement.subtotal)])
    w.writerow([*head, "discount", "", "", format_decimal(statement.discount_percent), "", "",
                "", "-" + format_decimal(statement.discount)])  # fmt: skip
    for adj in statement.adjustments:
        late = [*head[:3], adj.currency, f"lateUsage:{adj.period}"]
        for part in adj.lines:
            w.writerow([*late, part.meter, "", format_decimal(part.quantity), "", "", "",
                        format_decimal(part.amount)])  # fmt: skip
        if adj.discount:
            w.writerow([*late, "", "", "", "", "", "", "-" + format_decimal(adj.discount)])
    w.writerow([*head, "total", "", "", "", "", "", "", format_decimal(statement.total)])
    return out.getvalue().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    period = parse_period(args.period)
    if not args.tenant:
        raise InputError("TENANT", "required")
    with Ledger.open(resolve_url(args.db)) as ledger:
        statement, final = billing_statements.statement(ledger, args.tenant, period)
    if args.format in ("json", "yaml"):
        body = json.loads(statement.to_json(indent=None))
        out.emit({"tenant": args.tenant, "status": "final" if final else "running",
                  "statement": body}, args.format)  # fmt: skip
    elif args.format == "csv":
        print(render_csv(statement, args.tenant, final))
    else:
        print(render_table(statement, tenant=args.tenant))
        if not final:
            print("(running statement: the period is not closed)")
    return 0
