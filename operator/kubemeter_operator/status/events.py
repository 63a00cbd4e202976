"""Notable changes between two Tenant statuses, as Kubernetes Events to post. Pure.

`status_events(tenant, previous, new)` compares the status written last with the new one
and returns what a human should hear about: metering degraded or recovered, the price plan
missing or found again, a namespace conflict raised or resolved, a wallet shortfall, an
untrusted series, a refused token. The handler layer posts them (reason, message, type) on
the Tenant. Budget thresholds, the limit reached, wallet low/empty and enforcement are not
diffs of a status: they are announced once each through the ledger's outbox
(`status.notices`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from kubemeter_operator.api.tenant import TenantStatus
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.money import round_money
from kubemeter_operator.status import conditions as cond

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class StatusEvent:
    reason: str
    message: str
    type: EventType = "Normal"


def _money(amount: Decimal | None, currency: str | None) -> str:
    text = format_decimal(amount) if amount is not None else "?"
    return f"{text} {currency}" if currency else text


def _transition(
    previous: TenantStatus | None, new: TenantStatus, type_: str, bad: str
) -> tuple[str | None, str]:
    """("bad" | "good" | None, the new condition's message): "bad" when the condition is
    now in its `bad` status and was not before, "good" when it was and no longer is."""
    before = cond.find(previous.conditions, type_) if previous is not None else None
    after = cond.find(new.conditions, type_)
    if after is None:
        return None, ""
    was_bad = before is not None and before.status == bad
    is_bad = after.status == bad
    if is_bad and not was_bad:
        return "bad", after.message
    if was_bad and not is_bad:
        return "good", after.message
    return None, after.message


def status_events(
    tenant: str, previous: TenantStatus | None, new: TenantStatus
) -> list[StatusEvent]:
    """Events for what changed from `previous` to `new`, in a stable order. (PeriodClosed
    is not among them: the ledger decides when a period closes, see `period_closed`.)"""
    events: list[StatusEvent] = []
    change, message = _transition(previous, new, cond.METERING_DEGRADED, "True")
    if change == "bad":
        events.append(StatusEvent("MeteringDegraded", message, "Warning"))
    elif change == "good":
        events.append(
            StatusEvent(
                "MeteringRecovered",
                f"tenant {tenant}: all metering sources are available again; "
                "delayed usage is being counted",
            )
        )

    change, message = _transition(previous, new, cond.PRICE_PLAN_FOUND, "False")
    if change == "bad":
        events.append(StatusEvent("PricePlanNotFound", message, "Warning"))
    elif change == "good":
        events.append(StatusEvent("PricePlanFound", message))

    change, message = _transition(previous, new, cond.NAMESPACE_CONFLICT, "True")
    if change == "bad":
        events.append(StatusEvent("NamespaceConflict", message, "Warning"))
    elif change == "good":
        events.append(
            StatusEvent(
                "NamespaceConflictResolved",
                f"tenant {tenant}: no namespace is claimed by another tenant any more",
            )
        )

    for type_, reason in (
        (cond.CURRENCY_MISMATCH, "CurrencyMismatch"),
        (cond.PERIOD_CLOSE_BLOCKED, "PeriodCloseBlocked"),
        (cond.UNTRUSTED_USAGE, "UntrustedUsageIgnored"),
    ):
        change, message = _transition(previous, new, type_, "True")
        if change == "bad":
            events.append(StatusEvent(reason, f"tenant {tenant}: {message}", "Warning"))

    change, message = _transition(previous, new, cond.API_TOKEN_VALID, "False")
    if change == "bad":
        events.append(StatusEvent("ApiTokenRefused", f"tenant {tenant}: {message}", "Warning"))

    was_short = previous is not None and previous.wallet is not None and previous.wallet.shortfall
    if new.wallet is not None and new.wallet.shortfall > 0 and not was_short:
        events.append(
            StatusEvent(
                "WalletShortfall",
                f"tenant {tenant}: the prepaid balance could not cover "
                f"{_money(new.wallet.shortfall, new.currency)} of charges; they are taken "
                "from the next top-up",
                "Warning",
            )
        )

    return events


def period_closed(tenant: str, period: str, total: Decimal, currency: str) -> StatusEvent:
    """The Event for a finalised period (posted once the ledger has stored its statement)."""
    return StatusEvent(
        "PeriodClosed",
        f"tenant {tenant}: period {period} is finalised with a total of "
        f"{_money(round_money(total, currency), currency)}; "
        f"`kubemeter invoice {tenant} --period {period}` prints it",
    )


def usage_quarantined(tenant: str, what: str) -> StatusEvent:
    """The Event for a counter delta metering held back (released or discarded by an admin
    with `kubemeter quarantine`)."""
    return StatusEvent("UsageQuarantined", f"tenant {tenant}: {what}", "Warning")
