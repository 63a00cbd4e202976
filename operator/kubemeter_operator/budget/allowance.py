"""What an AI gateway may let a tenant spend now: the allowance answer. Pure.

    answer = allowance(tenant, period, spent=Decimal("12.40"), currency="USD",
                       wallet=WalletView(Decimal("7.60")))
    answer.allowed, answer.to_api(), answer.retry_after_s(now)

The answer is the budget decision (:mod:`kubemeter_operator.budget.decision`) for the
open period's running total and the prepaid wallet: allowed unless the decision stops the
tenant's work (``walletEmpty``, ``budgetExceeded`` with ``scaleDown``). A budget with
``enforcement: alert`` or ``none`` never refuses; its remaining amount goes negative.

``retry_after_s``: a spent budget resets when the period ends, so a refused client may retry
then; an empty wallet can be topped up at any time, so it retries after ``WALLET_RETRY_S``.

Imports no kopf, kubernetes or SQLAlchemy; the events API serves it (``/v1/.../allowance``,
``/v1/authorize``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.budget.decision import (
    BudgetInputs,
    Decision,
    Trigger,
    WalletView,
    decide,
)
from kubemeter_operator.usage import Period

WALLET_RETRY_S = 60
"""Retry-After of a refusal for an empty wallet (a top-up may come at any time)."""


@dataclass(frozen=True, slots=True)
class Allowance:
    tenant: str
    period: Period
    currency: str | None
    spent: Decimal
    limit: Decimal | None
    wallet_balance: Decimal | None
    decision: Decision

    @property
    def allowed(self) -> bool:
        return not self.decision.suspended

    @property
    def resets_at(self) -> datetime:
        return self.period.end

    def retry_after_s(self, now: datetime) -> int:
        """Seconds a refused client should wait before it asks again (at least 1)."""
        if self.decision.trigger is Trigger.WALLET_EMPTY:
            return WALLET_RETRY_S
        return max(1, math.ceil((self.resets_at - now).total_seconds()))

    def to_api(self) -> dict[str, Any]:
        """The JSON body (amounts as exact decimal strings, in the plan's currency)."""

        def money(value: Decimal | None) -> str | None:
            return format_decimal(value) if value is not None else None

        remaining = self.limit - self.spent if self.limit is not None else None
        body: dict[str, Any] = {
            "tenant": self.tenant,
            "allowed": self.allowed,
            "phase": self.decision.phase.value,
            "period": str(self.period),
            "currency": self.currency,
            "limit": money(self.limit),
            "spent": money(self.spent),
            "remaining": money(remaining),
            "walletBalance": money(self.wallet_balance),
            "resetsAt": self.resets_at.isoformat().replace("+00:00", "Z"),
            "reason": self.decision.reason,
        }
        if not self.allowed:
            assert self.decision.trigger is not None  # suspended
            body["refusedFor"] = self.decision.trigger.value
        return body


def allowance(
    tenant: Tenant,
    period: Period,
    *,
    spent: Decimal,
    currency: str | None,
    wallet: WalletView | None,
) -> Allowance:
    """The allowance of `tenant` in the open `period` (see the module docstring). `spent` is
    the running total (negative totals, credits, count as 0); `wallet` is None unless the
    tenant has a prepaid wallet."""
    spent = max(spent, Decimal(0))
    budget = tenant.spec.budget
    decision = decide(BudgetInputs(budget, period, spent, wallet=wallet))
    return Allowance(
        tenant=tenant.name,
        period=period,
        currency=currency,
        spent=spent,
        limit=budget.limit if budget is not None else None,
        wallet_balance=wallet.balance if wallet is not None else None,
        decision=decision,
    )
