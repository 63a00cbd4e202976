"""`kubemeter top` (`kubectl kubemeter top`): tenants by spend, from their status.

    kubectl kubemeter top [-o table|json|yaml] [--kubeconfig PATH] [--context NAME]

One row per Tenant: phase, the open period's spend, budget and the percentage used, the
recent burn rate (money per hour), the forecast period total, GPU-hours, tokens and the
number of suspended workloads. Grouped by currency, then the biggest spender first. A
narrow terminal cuts long tenant names (to 20 characters), then leaves out GPU-H, TOKENS,
FORECAST and BUDGET (in that order); -o json|yaml has everything.
Everything comes from the Tenants' status as the operator last wrote it (no ledger, no
Prometheus): the burn rate is the forecast's, `(projectedTotal - total) / (periodEnd -
lastMeteredTime)`. The table shows readable figures (39.6M tokens, 1,234.50 USD);
-o json|yaml shows exact ones (money as decimal strings, GPU time in milliseconds).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubemeter_operator.commands import _cluster as c
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser

_HOUR_S = Decimal(3600)
_GPU_KIND = "gpuTime"
_TOKEN_KINDS = ("promptTokens", "completionTokens", "cachedPromptTokens")
HEADERS = ("TENANT", "PHASE", "SPEND", "BUDGET", "USED", "BURN/H", "FORECAST", "GPU-H",
           "TOKENS", "SUSPENDED")  # fmt: skip
DROP = (7, 8, 6, 3)
"""Columns a narrow terminal leaves out, in this order: GPU-H, TOKENS, FORECAST, BUDGET."""


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers,
        "top",
        "tenants by spend: burn rate, budget use and phase (from the cluster)",
        __doc__,
    )
    out.add_output(parser)
    c.add_cluster_flags(parser)
    parser.set_defaults(run=run)


@dataclass(frozen=True, slots=True)
class TenantSpend:
    """One row of `top`: a Tenant's open period, from its status."""

    tenant: str
    phase: str | None
    period: str | None
    currency: str | None
    spend: Decimal | None
    budget: Decimal | None
    budget_used_percent: Decimal | None
    burn_per_hour: Decimal | None
    projected_total: Decimal | None
    gpu_ms: Decimal
    tokens: Decimal
    suspended_workloads: int

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "phase": self.phase, "period": self.period,
            "currency": self.currency, "spend": self.spend, "budget": self.budget,
            "budgetUsedPercent": self.budget_used_percent, "burnPerHour": self.burn_per_hour,
            "projectedTotal": self.projected_total, "gpuMs": self.gpu_ms,
            "tokens": int(self.tokens), "suspendedWorkloads": self.suspended_workloads,
        }  # fmt: skip


def burn_per_hour(status: dict[str, Any]) -> Decimal | None:
    """The forecast's burn rate in money per hour (see the module docstring); None when the
    status has no forecast or its period is over."""
    total = c.dec(status.get("total"))
    projected = c.dec(c.field(status, "forecast", "projectedTotal"))
    end = c.when(status.get("periodEnd"))
    at = c.when(status.get("lastMeteredTime"))
    if total is None or projected is None or end is None or at is None or end <= at:
        return None
    seconds = Decimal((end - at).total_seconds())
    places = out.places(status.get("currency")) + 2
    rate = max(projected - total, Decimal(0)) * _HOUR_S / seconds
    return rate.quantize(Decimal(1).scaleb(-places))


def quantity(meters: list[dict[str, Any]], kinds: tuple[str, ...]) -> Decimal:
    """The base-unit quantity of the status meters of these kinds, summed."""
    return sum((c.dec(m.get("quantity")) or Decimal(0) for m in meters if m.get("kind") in kinds),
               Decimal(0))  # fmt: skip


def spend_row(obj: dict[str, Any]) -> TenantSpend:
    raw = obj.get("status")
    status: dict[str, Any] = raw if isinstance(raw, dict) else {}
    meters = c.items(status.get("meters"))
    return TenantSpend(
        tenant=c.name(obj),
        phase=status.get("phase"),
        period=status.get("period"),
        currency=status.get("currency"),
        spend=c.dec(status.get("total")),
        budget=c.dec(c.field(status, "budget", "limit") or c.field(obj, "spec", "budget", "limit")),
        budget_used_percent=c.dec(c.field(status, "budget", "usedPercent")),
        burn_per_hour=burn_per_hour(status),
        projected_total=c.dec(c.field(status, "forecast", "projectedTotal")),
        gpu_ms=quantity(meters, (_GPU_KIND,)),
        tokens=quantity(meters, _TOKEN_KINDS),
        suspended_workloads=len(c.items(status.get("suspendedWorkloads"))),
    )


def by_spend(rows: list[TenantSpend]) -> list[TenantSpend]:
    """Grouped by currency (amounts in two currencies do not compare), biggest first."""
    return sorted(rows, key=lambda r: (r.currency or "~", -(r.spend or Decimal(0)), r.tenant))


def render(rows: list[TenantSpend], width: int | None) -> str:
    cells = [
        (
            r.tenant,
            r.phase or "-",
            out.money(r.spend, r.currency),
            out.money(r.budget, r.currency, code=False),
            out.percent(r.budget_used_percent),
            out.money(r.burn_per_hour, r.currency, code=False),
            out.money(r.projected_total, r.currency, code=False),
            out.hours(r.gpu_ms),
            out.count(r.tokens),
            str(r.suspended_workloads) if r.suspended_workloads else "-",
        )
        for r in rows
    ]
    return out.table(HEADERS, cells, right=range(2, len(HEADERS)), drop=DROP, shrink=(0,),
                     width=width)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    rows = by_spend([spend_row(t) for t in c.list_tenants(args)])
    if args.output != "table":
        out.emit({"tenants": [r.as_json() for r in rows]}, args.output)
    elif not rows:
        print("no Tenants found", file=sys.stderr)
    else:
        print(render(rows, out.terminal_width()))
    return 0
