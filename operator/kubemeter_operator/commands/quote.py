"""`kubemeter quote`: price a usage file against a PricePlan offline.

    kubemeter quote --plan PLAN.yaml --usage USAGE.json [--tenant TENANT.yaml]
                    [--period 2026-11] [-o json|yaml|table]

PLAN.yaml and TENANT.yaml are full Kubernetes objects (as `kubectl apply` takes them); the
tenant contributes its discount. USAGE.json is a JSON list of usage records. The default
period is the one holding the latest usage instant (a GPU window's last millisecond, an
event's timestamp), or the current UTC month when the file has no records. Usage outside the
period is ignored (a GPU window straddling the boundary counts its share). With --tenant,
records whose `tenant` names another tenant are ignored. Event ids count as the ledger counts
them (unique per tenant): a record repeating an earlier record's id with the same payload is
counted once; the same id with a different payload is an error. Bad input exits with status
2 and a message naming the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.files import load_priceplan, load_tenant, load_usage
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.api.usage import GpuUsage, UsageRecord
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.errors import InputError
from kubemeter_operator.rating import Statement, rate
from kubemeter_operator.usage import Period, accumulate
from kubemeter_operator.usage.canonical import record_json
from kubemeter_operator.usage.periods import PeriodError

_MS = timedelta(milliseconds=1)


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers,
        "quote",
        "price a usage file against a PricePlan (offline price calculator)",
        __doc__,
    )
    parser.add_argument("--plan", required=True, metavar="PLAN.yaml", help="PricePlan object")
    parser.add_argument(
        "--usage", required=True, metavar="USAGE.json", help="JSON list of usage records"
    )
    parser.add_argument("--tenant", metavar="TENANT.yaml", help="Tenant object (discount)")
    parser.add_argument(
        "--period", metavar="YYYY-MM", help="billing period (default: latest usage's period)"
    )
    out.add_output(parser, choices=("json", "yaml", "table"), default="json", dest="format",
                   aliases=("--format",))  # fmt: skip
    parser.set_defaults(run=run)


def last_instant(record: UsageRecord) -> datetime:
    """The latest instant a record covers (a GPU window's last millisecond)."""
    if isinstance(record, GpuUsage):
        return record.window_end - _MS
    return record.at


def default_period(records: list[UsageRecord], now: datetime | None = None) -> Period:
    """The period of the latest usage instant; the current UTC month with no records."""
    if not records:
        return Period.of(now or datetime.now(UTC))
    return Period.of(max(last_instant(r) for r in records))


def unique_events(records: list[UsageRecord], prefix: str = "usage") -> list[UsageRecord]:
    """The records with replays dropped: an event id seen before (for the same tenant) with
    the same canonical payload counts once, with another payload it is an `InputError`
    naming both indexes. Records without an id are all kept."""
    first: dict[tuple[str | None, str], tuple[int, str]] = {}
    out: list[UsageRecord] = []
    for i, record in enumerate(records):
        if record.id is None:
            out.append(record)
            continue
        payload = record_json(record)
        seen = first.setdefault((record.tenant, record.id), (i, payload))
        if seen[0] == i:
            out.append(record)
        elif seen[1] != payload:
            raise InputError(
                f"{prefix}[{i}].id",
                f"event id {record.id!r} is used twice ({prefix}[{seen[0]}] and {prefix}[{i}]) "
                "with different payloads",
            )
    return out


def run(args: argparse.Namespace) -> int:
    plan = load_priceplan(args.plan)
    tenant = load_tenant(args.tenant) if args.tenant else None
    records = load_usage(args.usage)
    discount = Decimal(0)
    if tenant is not None:
        discount = tenant.spec.discount_percent
        ref = tenant.spec.price_plan_ref.name
        if plan.name and ref != plan.name:
            print(
                f"kubemeter quote: warning: tenant {tenant.name!r} refers to plan {ref!r}, "
                f"quoting with {plan.name!r}",
                file=sys.stderr,
            )
        if tenant.name:  # a record without a tenant is the quoted tenant's, as in the API
            update = {"tenant": tenant.name}
            records = [r.model_copy(update=update) if r.tenant is None else r for r in records]
    records = unique_events(records)
    if tenant is not None and tenant.name:
        records = [r for r in records if r.tenant == tenant.name]
    if args.period:
        try:
            period = Period.parse(args.period)
        except PeriodError as exc:
            raise InputError("--period", exc.problem) from None
    else:
        period = default_period(records)
    totals = accumulate(records, period)
    statement = rate(plan.spec, totals, period=period, discount_percent=discount)
    if args.format == "table":
        print(render_table(statement, plan=plan.name, tenant=tenant.name if tenant else None))
    elif args.format == "yaml":
        out.emit(json.loads(statement.to_json()), "yaml")
    else:
        print(statement.to_json())
    return 0


def _short(value: Decimal, digits: int = 6) -> str:
    """A display quantity: at most `digits` decimals, trailing zeros dropped, `~` if cut."""
    rounded = round(value, digits)
    text = format_decimal(rounded.normalize()) if rounded else "0"
    return text if rounded == value else f"~{text}"


def render_table(statement: Statement, *, plan: str = "", tenant: str | None = None) -> str:
    """A readable statement: one row per meter, then fee, subtotal, discount, total."""
    cur = statement.currency
    head = f"Statement {statement.period} ({cur})"
    if plan:
        head += f"  plan {plan}"
    if tenant:
        head += f"  tenant {tenant}"
    rows = [("meter", "unit", "quantity", "included", "billable", "amount", "cost")]
    for line in statement.lines:
        detail = ""
        if line.tiers:
            detail = " ".join(
                f"[t{t.tier}: {_short(t.units)}×{format_decimal(t.unit_price)}"
                + (f"+{format_decimal(t.flat_fee)}" if t.flat_fee else "")
                + "]"
                for t in line.tiers
            )
        elif line.packages is not None:
            detail = f"[{line.packages} packages]"
        rows.append(
            (
                line.meter,
                line.unit.value,
                _short(line.billed_quantity),
                format_decimal(line.included),
                _short(line.billable),
                format_decimal(line.amount),
                format_decimal(line.cost) if line.cost is not None else "-",
            )
        )
        if detail:
            rows.append(("", "", detail, "", "", "", ""))
    widths = [max(len(r[i]) for r in rows if not (i == 2 and r[0] == "")) for i in range(7)]

    def fmt(row: tuple[str, ...]) -> str:
        if row[0] == "" and row[2]:
            return "    " + row[2]
        cells = [row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in range(7)]
        return "  ".join(cells).rstrip()

    out = [head, "", *(fmt(r) for r in rows), ""]
    width = max(len(x) for x in out)

    def total(label: str, value: str) -> str:
        return f"{label}{value.rjust(width - len(label))}"

    adjustments: list[str] = []
    for adj in statement.adjustments:
        other = "" if adj.currency == cur else f" (in {adj.currency}: billed separately)"
        adjustments.append(total(f"{adj.description}{other}", format_decimal(adj.amount)))
        for part in adj.lines:
            adjustments.append(
                total(f"  {part.meter} +{_short(part.quantity)}", format_decimal(part.amount))
            )
        if adj.discount:
            adjustments.append(total("  discount", "-" + format_decimal(adj.discount)))
    out += [
        total("platform fee", format_decimal(statement.platform_fee)),
        total("subtotal", format_decimal(statement.subtotal)),
        total(
            f"discount ({format_decimal(statement.discount_percent)} %)",
            "-" + format_decimal(statement.discount),
        ),
        *adjustments,
        total(f"total {cur}", format_decimal(statement.total)),
        total("cost", format_decimal(statement.cost)),
        total("margin", format_decimal(statement.margin)),
    ]
    if statement.unpriced:
        out += ["", "unpriced usage (no meter in this plan prices it):"]
        for u in statement.unpriced:
            what = " ".join(x for x in (u.kind, u.model, u.mig_profile, u.name) if x)
            qty = ", ".join(f"{k}={format_decimal(v)}" for k, v in u.quantities.items())
            out.append(f"  {what}: {qty}")
    return "\n".join(out)
