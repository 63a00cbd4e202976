"""`kubemeter why TENANT` (`kubectl kubemeter why TENANT`): why a Tenant is Warning or
Suspended, and what lifts it.

    kubectl kubemeter why TENANT [-o table|json|yaml] [--kubeconfig PATH] [--context NAME]

From the Tenant's spec and status as the operator last wrote them (no ledger): the phase;
the budget, its use and the alert thresholds that fired this period; the enforcement in
force (trigger, reason, since when, the overshoot) and the workloads it stopped; the
conditions that are not fine; and what lifts it. What lifts a suspension follows the budget
decision's restore rules (`kubemeter_operator.budget.decision`): budgetExceeded lifts when
the limit is raised above the spend, budgetForecast when it is raised above the limit at
suspension (and the forecast no longer reaches it), walletEmpty when a top-up covers what
the wallet owes; enforcement `alert` or `none` lifts any of them, and budgetExceeded and
budgetForecast lift with the next period. Warning lifts below the warning threshold
(`budget.policy.warning_percent`), with a wallet above its low-balance threshold, and with a
PricePlan that exists.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from kubemeter_operator.commands import _cluster as c
from kubemeter_operator.commands import _output as out
from kubemeter_operator.commands import documented_parser
from kubemeter_operator.errors import InputError

IN_FORCE = ("Suspending", "Suspended", "Restoring")
"""Enforcement states in which the tenant's GPU work is (being) kept stopped."""
FINE_WHEN_TRUE = frozenset({"Ready", "PricePlanFound", "ApiTokenValid"})
"""Condition types that are fine when True; every other type is fine unless True."""
WORKLOAD_HEADERS = ("KIND", "NAMESPACE", "NAME", "STATE", "BEFORE", "SINCE", "AUTOSCALER")


def register(subparsers: Any) -> None:
    parser = documented_parser(
        subparsers,
        "why",
        "why a tenant is Warning or Suspended, and what lifts it (from the cluster)",
        __doc__,
    )
    parser.add_argument("tenant", metavar="TENANT")
    out.add_output(parser)
    c.add_cluster_flags(parser)
    parser.set_defaults(run=run)


@dataclass(slots=True)
class Explanation:
    """What `why` says about one Tenant."""

    tenant: str
    display_name: str | None
    phase: str | None
    period: str | None
    period_end: str | None
    currency: str | None
    spend: Decimal | None
    budget: dict[str, Any] | None
    wallet: dict[str, Any] | None
    enforcement: dict[str, Any] | None
    suspended_workloads: list[dict[str, Any]]
    reasons: list[str] = field(default_factory=list)
    lifts: list[str] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "displayName": self.display_name, "phase": self.phase,
            "period": self.period, "periodEnd": self.period_end, "currency": self.currency,
            "spend": self.spend, "budget": self.budget, "wallet": self.wallet,
            "enforcement": self.enforcement, "suspendedWorkloads": self.suspended_workloads,
            "reasons": self.reasons, "lifts": self.lifts, "conditions": self.conditions,
        }  # fmt: skip


def warning_percent(spec_budget: dict[str, Any]) -> int | None:
    """The budget use from which the phase is Warning (the policy's own rule); None when
    the budget cannot be read (a field this CLI does not know)."""
    from pydantic import ValidationError

    from kubemeter_operator.api.tenant import Budget
    from kubemeter_operator.budget.policy import warning_percent as policy_warning

    try:
        return policy_warning(Budget.model_validate(spec_budget))
    except ValidationError:
        return None


def not_fine(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conditions that say something is wrong (a tenant without an API token is fine)."""

    def fine(cond: dict[str, Any]) -> bool:
        if cond.get("type") == "ApiTokenValid" and cond.get("status") == "Unknown":
            return True
        return cond.get("status") == ("True" if cond.get("type") in FINE_WHEN_TRUE else "False")

    return [cond for cond in conditions if not fine(cond)]


def _limit_for(spend: Decimal, percent: int, currency: str | None) -> Decimal:
    """The smallest limit (in the currency's minor units) at which `spend` is below
    `percent` of it: the next minor unit above `spend × 100 / percent`."""
    step = Decimal(1).scaleb(-out.places(currency))
    exact = spend * 100 / percent
    return ((exact / step).to_integral_value(rounding=ROUND_FLOOR) + 1) * step


def explain(obj: dict[str, Any]) -> Explanation:
    name = c.name(obj)
    raw = obj.get("status")
    status: dict[str, Any] = raw if isinstance(raw, dict) else {}
    spec_budget = c.field(obj, "spec", "budget")
    cur = status.get("currency")
    spend = c.dec(status.get("total"))
    enforcement = status.get("enforcement") if isinstance(status.get("enforcement"), dict) else None
    wallet = status.get("wallet") if isinstance(status.get("wallet"), dict) else None
    budget: dict[str, Any] | None = None
    if isinstance(spec_budget, dict):
        budget = {
            "limit": spec_budget.get("limit"),
            "usedPercent": c.field(status, "budget", "usedPercent"),
            "alertThresholds": spec_budget.get("alertThresholds"),
            "thresholdsCrossed": c.field(status, "budget", "thresholdsCrossed") or [],
            "warningPercent": warning_percent(spec_budget),
            "enforcement": spec_budget.get("enforcement", "alert"),
            "stopBefore": spec_budget.get("stopBefore"),
        }
    why = Explanation(
        tenant=name,
        display_name=c.field(obj, "spec", "displayName"),
        phase=status.get("phase"),
        period=status.get("period"),
        period_end=status.get("periodEnd"),
        currency=cur,
        spend=spend,
        budget=budget,
        wallet=wallet,
        enforcement=enforcement,
        suspended_workloads=c.items(status.get("suspendedWorkloads")),
        conditions=not_fine(c.items(status.get("conditions"))),
    )
    in_force = enforcement is not None and enforcement.get("state") in IN_FORCE
    if not status:
        why.reasons.append("no status yet: the operator has not metered this tenant")
    if in_force and enforcement is not None:
        _explain_enforcement(why, enforcement, spec_budget)
    elif why.phase == "Suspended":
        trigger = _trigger_now(why, spec_budget)
        why.reasons.append(f"the budget decision stops GPU work ({trigger or 'trigger unknown'});"
                           " the enforcement is not recorded in status yet")  # fmt: skip
        _lifts(why, trigger, None, spec_budget)
    if budget is not None:
        _explain_budget(why, budget, in_force)
    if wallet is not None:
        _explain_wallet(why, wallet, in_force)
    for cond in why.conditions:
        if cond.get("type") == "PricePlanFound":
            ref = c.field(obj, "spec", "pricePlanRef", "name")
            why.reasons.append(f"{cond.get('message') or 'the PricePlan is missing'}")
            why.lifts.append(f"create the PricePlan {ref!r}, or point spec.pricePlanRef at one")
        elif cond.get("type") == "EnforcementBlocked":
            why.reasons.append(f"enforcement could not make every change: {cond.get('message')}")
    if not why.reasons:
        why.reasons.append(f"nothing holds it back: the phase is {why.phase or 'unknown'}")
    return why


def _explain_enforcement(why: Explanation, enforcement: dict[str, Any], spec_budget: Any) -> None:
    state = enforcement.get("state")
    trigger = enforcement.get("trigger")
    reason = enforcement.get("reason")
    since = f"{state} since {enforcement.get('startedAt')} ({trigger})"
    why.reasons.append(f"{since}: {reason}" if reason else since)
    if enforcement.get("stoppedAt"):
        overshoot = c.dec(enforcement.get("overshoot"))
        why.reasons.append(
            f"the last GPU workload stopped at {enforcement['stoppedAt']}"
            + (f", {out.money(overshoot, why.currency)} over the limit" if overshoot else "")
        )
    skipped = [str(s) for s in enforcement.get("skipped") or []]
    if skipped:
        why.reasons.append("not restored (deleted or replaced while suspended): "
                           + ", ".join(skipped))  # fmt: skip
    if state == "Restoring":
        why.lifts.append("nothing: the workloads are being restored now")
        return
    _lifts(why, trigger, c.dec(enforcement.get("limit")), spec_budget)


def _trigger_now(why: Explanation, spec_budget: Any) -> str | None:
    """The trigger that holds now by the status alone (for a Suspended phase whose
    enforcement is not recorded yet); None when the status does not say."""
    balance = c.dec(c.field(why.wallet, "balance")) if why.wallet else None
    if balance is not None and balance <= 0:
        return "walletEmpty"
    limit = c.dec(c.field(spec_budget, "limit")) if isinstance(spec_budget, dict) else None
    if limit is not None and why.spend is not None and why.spend >= limit:
        return "budgetExceeded"
    return None


def _lifts(why: Explanation, trigger: Any, limit: Decimal | None, spec_budget: Any) -> None:
    """What lifts a suspension by `trigger` (`limit`: the limit at suspension)."""
    cur = why.currency
    off = "set spec.budget.enforcement to alert or none (kubemeter then only alerts)"
    next_period = f"the next period, from {why.period_end}" if why.period_end else None
    if trigger == "budgetExceeded":
        why.lifts.append(f"raise spec.budget.limit above the spend, {out.money(why.spend, cur)}")
        why.lifts += [off, *([next_period] if next_period else [])]
    elif trigger == "budgetForecast":
        stop = c.field(spec_budget, "stopBefore") if isinstance(spec_budget, dict) else None
        why.lifts.append(
            f"raise spec.budget.limit above {out.money(limit, cur)} (the limit at suspension), "
            f"far enough that the burn rate no longer reaches it within {stop or 'stopBefore'}"
        )
        why.lifts += [off, *([next_period] if next_period else [])]
    elif trigger == "walletEmpty":
        owed = c.dec(c.field(why.wallet, "shortfall")) if why.wallet else None
        amount = f"at least {out.money(owed, cur)} (what it owes)" if owed else "money"
        why.lifts.append(
            f"top up the wallet with {amount}: kubemeter wallet topup {why.tenant} AMOUNT "
            f"--currency {cur or 'CUR'} --key KEY"
        )
        if isinstance(spec_budget, dict):
            why.lifts.append(off)
    else:
        why.lifts.append(f"see the Tenant's Events: kubectl describe tenant {why.tenant}")


def _explain_budget(why: Explanation, budget: dict[str, Any], in_force: bool) -> None:
    crossed = [str(t) for t in budget["thresholdsCrossed"]]
    used = c.dec(budget["usedPercent"])
    limit = c.dec(budget["limit"])
    if crossed:
        why.reasons.append(
            f"alert thresholds fired this period: {', '.join(t + '%' for t in crossed)} "
            f"({out.percent(used)} of {out.money(limit, why.currency)} used)"
        )
    warning = budget["warningPercent"]
    spend = why.spend
    if in_force or why.phase != "Warning" or warning is None or spend is None or not limit:
        return
    if spend * 100 < warning * limit:  # compared exactly, as the decision does
        return
    why.reasons.append(f"{out.percent(used)} of the budget used: Warning from {warning}%")
    raise_to = _limit_for(spend, warning, why.currency)
    why.lifts.append(f"raise spec.budget.limit to {out.money(raise_to, why.currency)} or more "
                     f"(below {warning}% used)")  # fmt: skip
    if why.period_end:
        why.lifts.append(f"the next period, from {why.period_end}")


def _explain_wallet(why: Explanation, wallet: dict[str, Any], in_force: bool) -> None:
    balance = c.dec(wallet.get("balance"))
    topup = f"kubemeter wallet topup {why.tenant} AMOUNT --currency {why.currency or 'CUR'} "
    topup += "--key KEY"
    if balance is not None and balance <= 0 and not in_force:
        why.reasons.append(f"the prepaid wallet is empty ({out.money(balance, why.currency)}); "
                           "not enforced (spec.budget.enforcement is not scaleDown)")  # fmt: skip
        why.lifts.append(f"top up the wallet: {topup}")
    elif wallet.get("low"):
        why.reasons.append(
            f"the prepaid wallet is low: {out.money(balance, why.currency)}, below "
            "spec.wallet.lowBalanceThreshold"
        )
        if not any(lift.startswith("top up the wallet") for lift in why.lifts):
            why.lifts.append(f"top up the wallet: {topup}")


def workload_table(workloads: list[dict[str, Any]], width: int | None) -> str:
    """The suspended workloads; a column no workload fills (AUTOSCALER, often) is left out,
    and over the width AUTOSCALER is cut first, then NAMESPACE, then NAME."""
    rows = _workload_rows(workloads)
    keep = [i for i in range(len(WORKLOAD_HEADERS)) if any(r[i] != "-" for r in rows)]
    headers = [WORKLOAD_HEADERS[i] for i in keep]
    shrink = [keep.index(i) for i in (6, 1, 2) if i in keep]  # AUTOSCALER, NAMESPACE, NAME
    return out.table(headers, [[r[i] for i in keep] for r in rows], shrink=shrink, width=width)


def _workload_rows(workloads: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for w in workloads:
        if w.get("replicas") is not None:
            before = f"replicas={w['replicas']}"
        elif w.get("suspend") is not None:
            before = f"suspend={str(w['suspend']).lower()}"
        else:
            before = "-"
        cells = (w.get("kind"), w.get("namespace"), w.get("name"), w.get("state", "Stopped"),
                 before, w.get("suspendedAt"), w.get("autoscaler"))  # fmt: skip
        rows.append(tuple(str(x) if x not in (None, "") else "-" for x in cells))
    return rows


def render(why: Explanation, width: int | None) -> str:
    def wrap(text: str, first: str = "  - ", rest: str = "    ") -> list[str]:
        if width is None:
            return [first + text]
        return textwrap.wrap(text, width=max(width, 40), initial_indent=first,
                             subsequent_indent=rest, break_on_hyphens=False)  # fmt: skip

    cur = why.currency
    name = f"{why.tenant} ({why.display_name})" if why.display_name else why.tenant
    head = [("Tenant", name), ("Phase", why.phase or "-")]
    if why.period:
        ends = f", ends {why.period_end}" if why.period_end else ""
        head.append(("Period", f"{why.period}{ends}"))
    head.append(("Spend", out.money(why.spend, cur)))
    if why.budget is not None:
        b = why.budget
        thresholds = ", ".join(f"{t}%" for t in b["alertThresholds"] or [])
        used = out.percent(c.dec(b["usedPercent"]))
        head.append((
            "Budget", f"{out.money(c.dec(b['limit']), cur)}, {used} used, enforcement "
            f"{b['enforcement']}" + (f", thresholds {thresholds}" if thresholds else ""),
        ))  # fmt: skip
    if why.wallet is not None:
        owed = c.dec(why.wallet.get("shortfall"))
        head.append(("Wallet", f"balance {out.money(c.dec(why.wallet.get('balance')), cur)}"
                     + (f", owes {out.money(owed, cur)}" if owed else "")))  # fmt: skip
    lines: list[str] = []
    for label, value in head:
        lines += wrap(value, f"{label + ':':<12}", " " * 12)
    lines += ["", "Why:"]
    for reason in why.reasons:
        lines += wrap(reason)
    if why.suspended_workloads:
        lines += ["", f"Suspended workloads ({len(why.suspended_workloads)}):"]
        inner = width - 2 if width is not None else None
        body = workload_table(why.suspended_workloads, inner)
        lines += ["  " + row for row in body.splitlines()]
    lines += ["", "What lifts it:"]
    for lift in why.lifts or ["nothing to lift"]:
        lines += wrap(lift)
    if why.conditions:
        lines += ["", "Conditions:"]
        for cond in why.conditions:
            text = f"{cond.get('type')}={cond.get('status')} {cond.get('reason', '')}"
            lines += wrap(f"{text}: {cond.get('message')}" if cond.get("message") else text)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    found = [t for t in c.list_tenants(args) if c.name(t) == args.tenant]
    if not found:
        raise InputError("TENANT", f"no Tenant named {args.tenant!r} in the cluster")
    why = explain(found[0])
    if args.output != "table":
        out.emit(why.as_json(), args.output)
    else:
        print(render(why, out.terminal_width()))
    return 0
