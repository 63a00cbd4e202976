"""`kubemeter unassigned`: usage of pods no Tenant owns, per namespace and pod.

The metering loop records such usage under the reserved ledger tenant ``_unassigned``
(never dropped); this lists it for a period so the admin can add or fix Tenants.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kubemeter_operator.api.usage import GpuUsage, TokenUsage
from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import DEFAULT_URL, Ledger
from kubemeter_operator.rating.periods import Period
from kubemeter_operator.tenancy import UNASSIGNED

ENV_DB = "KUBEMETER_LEDGER_URL"


@dataclass
class Row:
    namespace: str
    pod: str
    gpu_allocated_ms: int = 0
    gpu_active_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0

    @property
    def gpu_hours(self) -> str:
        return f"{self.gpu_allocated_ms / 3_600_000:.4f}"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "unassigned", help="list GPU time and tokens of pods that no Tenant owns"
    )
    parser.add_argument("--period", help="billing period YYYY-MM (default: the current one)")
    parser.add_argument(
        "--db",
        default=os.environ.get(ENV_DB, DEFAULT_URL),
        help=f"ledger URL or SQLite path (default: ${ENV_DB} or {DEFAULT_URL})",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(run=run)


def unassigned_usage(ledger: Ledger, period: Period) -> list[Row]:
    """Unassigned usage of ``period`` per (namespace, pod), from the recorded windows."""
    rows: dict[tuple[str, str], Row] = {}
    for record in ledger.window_records(UNASSIGNED, period):
        key = (record.namespace or "", record.pod or "")
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(*key)
        if isinstance(record, GpuUsage):
            row.gpu_allocated_ms += record.allocated_ms
            row.gpu_active_ms += record.active_ms
        elif isinstance(record, TokenUsage):
            row.prompt_tokens += record.prompt_tokens
            row.completion_tokens += record.completion_tokens
            row.cached_prompt_tokens += record.cached_prompt_tokens
    return [rows[k] for k in sorted(rows)]


def run(args: argparse.Namespace) -> int:
    try:
        period = Period.parse(args.period) if args.period else Period.of(datetime.now(UTC))
    except ValueError as exc:
        raise InputError("--period", str(exc)) from exc
    with Ledger.open(args.db, migrate=False) as ledger:
        rows = unassigned_usage(ledger, period)
    if args.output == "json":
        print(json.dumps({"period": str(period), "pods": [asdict(r) for r in rows]}, indent=2))
        return 0
    if not rows:
        print(f"no unassigned usage in {period}")
        return 0
    header = ("NAMESPACE", "POD", "GPU-HOURS", "GPU-MS", "ACTIVE-MS", "PROMPT", "COMPLETION")
    table = [header] + [
        (r.namespace or "<none>", r.pod or "<none>", r.gpu_hours, str(r.gpu_allocated_ms),
         str(r.gpu_active_ms), str(r.prompt_tokens), str(r.completion_tokens))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
