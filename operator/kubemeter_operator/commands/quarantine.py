"""`kubemeter quarantine`: usage metering held back because it broke a physics bound.

    kubemeter quarantine list [--state held|released|discarded|all] [--db URL] [-o json|yaml]
    kubemeter quarantine release ID [--db URL]
    kubemeter quarantine discard ID [--db URL]

A counter delta over its bound (more GPU milliseconds than wall time, tokens faster than
`--max-token-rate`) is never billed: the metering loop keeps it in the ledger's quarantine,
with the usage record it would have been. `release` records that record as its usage
window (the same key, so releasing twice is a no-op), booked like any usage: a part that
falls into a finalised period is billed as late usage on the next open statement. `discard`
keeps it unbilled for good. ID is the full id or a unique prefix of at least 8 digits, as
`list` prints it. Releasing a discarded entry, or discarding a released one, is an error.
The ledger is --db, else $KUBEMETER_DB, else sqlite:///kubemeter-ledger.db.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kubemeter_operator.api.usage import GpuUsage, TokenUsage, UsageRecord
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.ledger import Ledger, QuarantineRow
from kubemeter_operator.ledger.codec import instant, record_json
from kubemeter_operator.ledger.engine import resolve_url
from kubemeter_operator.ledger.quarantine import STATES

SHORT_ID = 16


def register(sub: Any) -> None:
    parser = documented_parser(
        sub,
        "quarantine",
        "list, release or discard usage held back by the metering bounds",
        __doc__,
    )
    actions = parser.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="list quarantined usage (held by default)")
    ls.add_argument("--state", choices=[*STATES, "all"], default="held")
    ls.add_argument("--db", metavar="URL", help="ledger URL")
    out.add_output(ls)
    ls.set_defaults(run=run_list)
    for name, help_, fn in (
        ("release", "bill held usage (as the usage window it would have been)", run_release),
        ("discard", "keep held usage unbilled for good", run_discard),
    ):
        p = actions.add_parser(name, help=help_)
        p.add_argument("id", metavar="ID", help="id or unique prefix (8+ digits)")
        p.add_argument("--db", metavar="URL", help="ledger URL")
        p.set_defaults(run=fn)


def quantity(record: UsageRecord) -> str:
    """What a held record would bill, in base units."""
    if isinstance(record, GpuUsage):
        return f"{record.allocated_ms} gpu-ms ({record.active_ms} active)"
    if isinstance(record, TokenUsage):
        parts = [
            f"{n} {name}"
            for name, n in (
                ("prompt", record.prompt_tokens),
                ("completion", record.completion_tokens),
                ("cached", record.cached_prompt_tokens),
            )
            if n
        ]
        return ", ".join(parts) + " tokens"
    return record.kind  # pragma: no cover - metering holds GPU and token records only


def as_json(row: QuarantineRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "tenant": row.tenant,
        "source": row.source,
        "series": row.series,
        "windowStart": instant(row.window_start),
        "windowEnd": instant(row.window_end),
        "reason": row.reason,
        "record": json.loads(record_json(row.record)),
        "createdAt": instant(row.created_at),
        "decidedAt": instant(row.decided_at) if row.decided_at else None,
    }


def run_list(args: argparse.Namespace) -> int:
    state = None if args.state == "all" else args.state
    with Ledger.open(resolve_url(args.db), migrate=False) as ledger:
        rows = ledger.quarantined(state)
    if args.output != "table":
        out.emit({"entries": [as_json(r) for r in rows]}, args.output)
        return 0
    if not rows:
        print(f"no quarantined usage ({args.state})")
        return 0
    header = ("ID", "STATE", "TENANT", "POD", "WINDOW", "USAGE", "REASON")
    table = [header] + [
        (r.id[:SHORT_ID], r.state, r.tenant, f"{r.record.namespace or '-'}/{r.record.pod or '-'}",
         f"{instant(r.window_start)}..{instant(r.window_end)}", quantity(r.record), r.reason)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def run_release(args: argparse.Namespace) -> int:
    with Ledger.open(resolve_url(args.db), migrate=False) as ledger:
        row, changed = ledger.release_quarantined(args.id)
    state = "released" if changed else "was already released"
    print(f"{row.id}: {state}: {quantity(row.record)} recorded as usage of {row.tenant} "
          f"({instant(row.window_start)}..{instant(row.window_end)})")  # fmt: skip
    return 0


def run_discard(args: argparse.Namespace) -> int:
    with Ledger.open(resolve_url(args.db), migrate=False) as ledger:
        row, changed = ledger.discard_quarantined(args.id)
    state = "discarded" if changed else "was already discarded"
    print(f"{row.id}: {state}: {quantity(row.record)} of {row.tenant} stays unbilled")
    return 0
