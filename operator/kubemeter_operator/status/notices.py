"""What kubemeter announces about budgets and enforcement, each exactly once. Pure.

An `Announcement` is a Kubernetes Event (reason, message, type) and the `data` of its
webhook, under a `key` that names what is announced once: the ledger's outbox stores one
row per (tenant, key), so recording the same key again (after a restart, a failover, or on
the next cycle) announces nothing.

Keys and reasons (stable; README "Webhooks" documents the data fields):

- ``<period>/threshold/<t>``: BudgetThresholdCrossed, each alert threshold below 100 once
  per period (enforcement `alert` or `scaleDown`);
- ``<period>/exceeded``: BudgetExceeded, once per period when the total reaches the limit;
- ``<period>/wallet-low/<topped up>``, ``<period>/wallet-empty/<topped up>``: WalletLow and
  WalletEmpty, once per period and top-up (the wallet's lifetime top-ups name the episode:
  a top-up that is spent again announces again);
- ``suspension/<id>/suspended`` and ``.../restored``: WorkloadsSuspended, WorkloadsRestored;
- ``suspension/<id>/fought/<kind>/<namespace>/<name>/<generation>``: EnforcementFought, once
  per change that scaled a stopped workload back up;
- ``suspension/<id>/pod/<namespace>/<name>/<uid>``: GpuPodLeftRunning or GpuPodDeleted.

Every message names the tenant, and the budget and amounts where there are any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from kubemeter_operator.api.tenant import Budget, BudgetEnforcement
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.budget.decision import Decision

Severity = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Announcement:
    key: str
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    severity: Severity = "Warning"
    period: str | None = None


def _money(amount: Decimal | None, currency: str | None) -> str:
    text = format_decimal(amount) if amount is not None else "?"
    return f"{text} {currency}" if currency else text


def _amounts(
    total: Decimal, budget: Budget | None, currency: str | None
) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"spent": format_decimal(total), "currency": currency}
    if budget is None:
        return f"spent {_money(total, currency)}", data
    data["limit"] = format_decimal(budget.limit)
    return f"spent {_money(total, currency)} of {_money(budget.limit, currency)}", data


def budget_announcements(
    tenant: str,
    decision: Decision,
    *,
    budget: Budget | None,
    period: str,
    total: Decimal,
    currency: str | None,
) -> list[Announcement]:
    """Thresholds and the limit reached (the caller records them; the ledger keeps each
    key once, so passing all crossed thresholds every cycle is right)."""
    if budget is None or budget.enforcement is BudgetEnforcement.NONE:
        return []
    spent, data = _amounts(total, budget, currency)
    out: list[Announcement] = []
    for threshold in decision.crossed:
        if threshold >= 100:
            continue
        out.append(
            Announcement(
                f"{period}/threshold/{threshold}",
                "BudgetThresholdCrossed",
                f"tenant {tenant} reached {threshold}% of its budget for {period}: {spent}",
                {**data, "threshold": threshold},
                period=period,
            )
        )
    if total >= budget.limit:
        action = (
            "its GPU workloads are being stopped"
            if budget.enforcement is BudgetEnforcement.SCALE_DOWN
            else "enforcement is alert only: nothing is stopped"
        )
        out.append(
            Announcement(
                f"{period}/exceeded",
                "BudgetExceeded",
                f"tenant {tenant} spent its budget for {period}: {spent}; {action}",
                {**data, "threshold": 100, "enforcement": str(budget.enforcement)},
                period=period,
            )
        )
    return out


def wallet_announcements(
    tenant: str,
    *,
    period: str,
    balance: Decimal,
    low_threshold: Decimal,
    topped_up: Decimal,
    currency: str | None,
    enforces: bool,
) -> list[Announcement]:
    """WalletLow below the low-balance threshold, WalletEmpty at 0 (both once per period
    and top-up episode)."""
    epoch = format_decimal(topped_up)
    data = {
        "balance": format_decimal(balance),
        "lowBalanceThreshold": format_decimal(low_threshold),
        "currency": currency,
    }
    if balance <= 0:
        action = "its GPU workloads are being stopped" if enforces else "nothing is stopped"
        return [
            Announcement(
                f"{period}/wallet-empty/{epoch}",
                "WalletEmpty",
                f"tenant {tenant}: the prepaid wallet is empty (balance "
                f"{_money(balance, currency)}); {action} until a top-up",
                data,
                period=period,
            )
        ]
    if balance < low_threshold:
        return [
            Announcement(
                f"{period}/wallet-low/{epoch}",
                "WalletLow",
                f"tenant {tenant}: the prepaid balance is {_money(balance, currency)}, below "
                f"{_money(low_threshold, currency)}",
                data,
                period=period,
            )
        ]
    return []


_BECAUSE = {
    "budgetExceeded": "its budget is spent",
    "walletEmpty": "its prepaid wallet is empty",
    "budgetForecast": "its budget would run out within budget.stopBefore",
}


def workloads_suspended(
    tenant: str,
    suspension_id: str,
    *,
    period: str,
    trigger: str,
    reason: str,
    stopped: Sequence[str],
    overshoot: Decimal,
    total: Decimal,
    budget: Budget | None,
    currency: str | None,
) -> Announcement:
    spent, data = _amounts(total, budget, currency)
    more = f" and {len(stopped) - 10} more" if len(stopped) > 10 else ""
    shown = ", ".join(stopped[:10]) + more
    because = _BECAUSE.get(trigger, trigger)
    return Announcement(
        f"suspension/{suspension_id}/suspended",
        "WorkloadsSuspended",
        f"tenant {tenant}: {len(stopped)} GPU workload(s) stopped because {because} "
        f"({spent}; overshoot {_money(overshoot, currency)}): {shown or 'none were running'}",
        {
            **data,
            "trigger": trigger,
            "reason": reason,
            "overshoot": format_decimal(overshoot),
            "workloads": list(stopped[:200]),
            "suspension": suspension_id,
        },
        period=period,
    )


def workloads_restored(
    tenant: str,
    suspension_id: str,
    *,
    period: str,
    why: str,
    restored: Sequence[str],
    skipped: Sequence[str],
) -> Announcement:
    gone = f"; not restored (deleted or replaced meanwhile): {', '.join(skipped[:10])}"
    return Announcement(
        f"suspension/{suspension_id}/restored",
        "WorkloadsRestored",
        f"tenant {tenant}: {len(restored)} workload(s) restored to their recorded replicas "
        f"and suspend state because {why}" + (gone if skipped else ""),
        {
            "why": why,
            "workloads": list(restored[:200]),
            "skipped": list(skipped[:200]),
            "suspension": suspension_id,
        },
        severity="Normal",
        period=period,
    )


def enforcement_fought(
    tenant: str,
    suspension_id: str,
    *,
    period: str,
    workload: str,
    key: str,
    generation: int,
    changed_by: str,
    field_name: str,
) -> Announcement:
    return Announcement(
        f"suspension/{suspension_id}/fought/{key}/{generation}",
        "EnforcementFought",
        f"tenant {tenant}: {workload} was started again while suspended ({field_name} set by "
        f"{changed_by}); kubemeter stopped it again. Lift the suspension instead (raise the "
        "budget, top up the wallet or set spec.budget.enforcement to alert)",
        {
            "workload": workload,
            "changedBy": changed_by,
            "field": field_name,
            "generation": generation,
            "suspension": suspension_id,
        },
        period=period,
    )


def bare_gpu_pod(
    tenant: str,
    suspension_id: str,
    *,
    period: str,
    namespace: str,
    name: str,
    uid: str,
    deleted: bool,
) -> Announcement:
    if deleted:
        reason, text = "GpuPodDeleted", "was deleted (budget.bareGpuPods: delete)"
    else:
        reason = "GpuPodLeftRunning"
        text = (
            "has no controller to stop it and is left running; set budget.bareGpuPods: delete "
            "to delete such pods, or delete it by hand"
        )
    return Announcement(
        f"suspension/{suspension_id}/pod/{namespace}/{name}/{uid}",
        reason,
        f"tenant {tenant}: GPU pod {namespace}/{name} {text}",
        {"pod": f"{namespace}/{name}", "deleted": deleted, "suspension": suspension_id},
        period=period,
    )
