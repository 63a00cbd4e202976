"""`kubemeter unassigned`: usage of pods no Tenant owns, per namespace and pod.

The metering loop records such usage under the reserved ledger tenant ``_unassigned``
(never dropped); this lists it for a period so the admin can add or fix Tenants.
The ledger is --db, else $KUBEMETER_DB, else sqlite:///kubemeter-ledger.db (as for
every other command).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.usage import GpuUsage, TokenUsage
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands.invoice import parse_period
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import resolve_url
from kubemeter_operator.metering.cycle import UnassignedUsage
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.tenancy import UNASSIGNED

MS_PER_HOUR = Decimal(3_600_000)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "unassigned", help="list GPU time and tokens of pods that no Tenant owns"
    )
    parser.add_argument("--period", help="billing period YYYY-MM (default: the current one)")
    parser.add_argument(
        "--db", metavar="URL", help="ledger URL (default: $KUBEMETER_DB or the local SQLite)"
    )
    out.add_output(parser)
    parser.set_defaults(run=run)


def unassigned_usage(ledger: Ledger, period: Period) -> list[UnassignedUsage]:
    """Unassigned usage of ``period`` per (namespace, pod), from the recorded windows."""
    rows: dict[tuple[str, str], UnassignedUsage] = {}
    for record in ledger.window_records(UNASSIGNED, period):
        key = (record.namespace or "", record.pod or "")
        row = rows.get(key)
        if row is None:
            row = rows[key] = UnassignedUsage(*key, reason="")
        if isinstance(record, GpuUsage):
            row.allocated_ms += record.allocated_ms
            row.active_ms += record.active_ms
        elif isinstance(record, TokenUsage):
            row.prompt_tokens += record.prompt_tokens
            row.completion_tokens += record.completion_tokens
            row.cached_prompt_tokens += record.cached_prompt_tokens
    return [rows[k] for k in sorted(rows)]


def _gpu_hours(row: UnassignedUsage) -> str:
    return f"{Decimal(row.allocated_ms) / MS_PER_HOUR:.4f}"


def run(args: argparse.Namespace) -> int:
    period = parse_period(args.period) if args.period else Period.of(datetime.now(UTC))
    with Ledger.open(resolve_url(args.db), migrate=False) as ledger:
        rows = unassigned_usage(ledger, period)
    if args.output != "table":
        pods = [{k: v for k, v in asdict(r).items() if k != "reason"} for r in rows]
        out.emit({"period": str(period), "pods": pods}, args.output)
        return 0
    if not rows:
        print(f"no unassigned usage in {period}")
        return 0
    header = ("NAMESPACE", "POD", "GPU-HOURS", "GPU-MS", "ACTIVE-MS", "PROMPT", "COMPLETION")
    table = [header] + [
        (r.namespace or "<none>", r.pod or "<none>", _gpu_hours(r), str(r.allocated_ms),
         str(r.active_ms), str(r.prompt_tokens), str(r.completion_tokens))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
