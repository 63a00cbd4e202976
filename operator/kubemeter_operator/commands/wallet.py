"""`kubemeter wallet`: prepaid balances in the ledger.

    kubemeter wallet topup TENANT AMOUNT --currency USD --key KEY [--db URL]
    kubemeter wallet balance TENANT [--db URL] [-o text|json|yaml]

A top-up is idempotent by KEY: running the same command again changes nothing; the same
KEY with another amount is refused. AMOUNT is a decimal string (e.g. 250.00).
"""

from __future__ import annotations

import argparse
from typing import Any

from kubemeter_operator.api.types import format_decimal, parse_decimal
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import resolve_url


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers, "wallet", "top up or show a tenant's prepaid wallet", __doc__
    )
    sub = parser.add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    top = sub.add_parser("topup", help="add money to a wallet (idempotent by --key)")
    top.add_argument("tenant", metavar="TENANT")
    top.add_argument("amount", metavar="AMOUNT")
    top.add_argument("--currency", required=True)
    top.add_argument("--key", required=True, help="idempotency key of this top-up")
    top.add_argument("--db", metavar="URL")
    top.set_defaults(run=run_topup)
    bal = sub.add_parser("balance", help="show a wallet's balance")
    bal.add_argument("tenant", metavar="TENANT")
    bal.add_argument("--db", metavar="URL")
    out.add_output(bal, choices=("text", "json", "yaml"), default="text", dest="format",
                   aliases=("--format",))  # fmt: skip
    bal.set_defaults(run=run_balance)


def run_topup(args: argparse.Namespace) -> int:
    try:
        amount = parse_decimal(args.amount)
    except ValueError as exc:
        raise InputError("AMOUNT", str(exc)) from None
    with Ledger.open(resolve_url(args.db)) as ledger:
        balance = ledger.topup(args.tenant, amount, args.currency.upper(), args.key)
    print(f"{args.tenant}: balance {format_decimal(balance)} {args.currency.upper()}")
    return 0


def run_balance(args: argparse.Namespace) -> int:
    with Ledger.open(resolve_url(args.db)) as ledger:
        w = ledger.wallet(args.tenant)
    if args.format in ("json", "yaml"):
        out.emit({"tenant": w.tenant, "currency": w.currency, "balance": w.balance,
                  "toppedUp": w.topped_up, "taken": w.taken}, args.format)  # fmt: skip
    else:
        print(f"{w.tenant}: balance {format_decimal(w.balance)} {w.currency or ''}".rstrip())
    return 0
