"""`kubemeter ledger`: write to the ledger by hand (try invoices without the operator).

    kubemeter ledger record --tenant T --usage USAGE.json [--db URL]
    kubemeter ledger terms --tenant T --period YYYY-MM --plan PLAN.yaml
                           [--discount PERCENT] [--db URL]
    kubemeter ledger finalize --tenant T --period YYYY-MM [--db URL]

`record` loads a JSON list of usage records (every record needs an `id`: it is the
idempotency key; recording the file again is a no-op). `terms` records the price plan and
discount a tenant has for a period (the operator does this from the Tenant and PricePlan).
`finalize` closes a period: its running statement becomes the immutable final one.
"""

from __future__ import annotations

import argparse
from typing import Any

from kubemeter_operator.api.files import load_priceplan, load_usage
from kubemeter_operator.api.types import parse_decimal
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.commands.invoice import parse_period
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import resolve_url


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers, "ledger", "record usage, terms or a final statement in the ledger", __doc__
    )
    sub = parser.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    rec = sub.add_parser("record", help="record a usage file (idempotent by event id)")
    rec.add_argument("--tenant", required=True)
    rec.add_argument("--usage", required=True, metavar="USAGE.json")
    rec.add_argument("--db", metavar="URL")
    rec.set_defaults(run=run_record)
    terms = sub.add_parser("terms", help="record a tenant's plan and discount for a period")
    terms.add_argument("--tenant", required=True)
    terms.add_argument("--period", required=True, metavar="YYYY-MM")
    terms.add_argument("--plan", required=True, metavar="PLAN.yaml")
    terms.add_argument("--discount", default="0", metavar="PERCENT")
    terms.add_argument("--db", metavar="URL")
    terms.set_defaults(run=run_terms)
    fin = sub.add_parser("finalize", help="close a period with its running statement")
    fin.add_argument("--tenant", required=True)
    fin.add_argument("--period", required=True, metavar="YYYY-MM")
    fin.add_argument("--db", metavar="URL")
    fin.set_defaults(run=run_finalize)


def run_record(args: argparse.Namespace) -> int:
    records = load_usage(args.usage)
    with Ledger.open(resolve_url(args.db)) as ledger:
        result = ledger.record_events(args.tenant, records)
    print(f"{args.tenant}: {result.accepted} recorded, {result.duplicates} already recorded")
    return 0


def run_terms(args: argparse.Namespace) -> int:
    period = parse_period(args.period)
    plan = load_priceplan(args.plan)
    try:
        discount = parse_decimal(args.discount)
    except ValueError as exc:
        raise InputError("--discount", str(exc)) from None
    if discount > 100:
        raise InputError("--discount", "must be between 0 and 100")
    with Ledger.open(resolve_url(args.db)) as ledger:
        ledger.set_terms(args.tenant, period, plan.spec, discount)
    print(f"{args.tenant} {period}: plan {plan.name or '(unnamed)'}, discount {discount}%")
    return 0


def run_finalize(args: argparse.Namespace) -> int:
    period = parse_period(args.period)
    with Ledger.open(resolve_url(args.db)) as ledger:
        statement = billing_statements.running_statement(ledger, args.tenant, period)
        stored = billing_statements.finalize(ledger, args.tenant, period, statement)
    state = "finalised" if stored else "was already finalised"
    print(f"{args.tenant} {period}: {state}, total {statement.total} {statement.currency}")
    return 0
