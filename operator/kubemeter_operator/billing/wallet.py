"""Prepaid wallets over time: every period's charges burn the balance, per period.

Each cycle, for a prepaid tenant, oldest period first:

- every finalised period that still has an outstanding shortfall is settled again against
  its final total (a top-up pays old debts first);
- every open period (the one closing after midnight, and the current one) is settled
  against its running total: burns follow it upward; what a lower final total leaves over
  is refunded when the period closes.

A settle is one ledger transaction under the wallet row's lock: read what the period is
due and has paid, take the difference (`ledger.wallets.settle`). So charges of October
rated after midnight still burn October's share, two operators that see totals of 20 and
21 take 21 between them (not 7 + 8 on top of 13), and a crash between two settles loses
nothing: the next one takes what is still due. The close itself settles the period's final
total in its own transaction (`billing.close`).

A settle in another currency than the wallet's is refused (InputError): reported, never
converted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Settlement, WalletBalance
from kubemeter_operator.usage import Period

log = logging.getLogger(__name__)


class WalletLedger(Protocol):
    def settle(
        self, tenant: str, period: Period, due: Decimal, currency: str, *, final: bool = ...
    ) -> Settlement: ...

    def settlements(self, tenant: str) -> list[Settlement]: ...

    def wallet(self, tenant: str) -> WalletBalance: ...


@dataclass(frozen=True)
class Due:
    """What a period charges so far (its running or final total)."""

    period: Period
    total: Decimal
    currency: str
    final: bool = False
    """The invoice total of a finalised period (a settle may then also refund)."""


@dataclass
class WalletReport:
    tenant: str
    settled: list[Settlement] = field(default_factory=list)
    wallet: WalletBalance | None = None
    error: str = ""
    """Why a period could not be settled (another currency), for a condition."""

    @property
    def shortfall(self) -> Decimal:
        return self.wallet.outstanding if self.wallet is not None else Decimal(0)


def settle_wallet(ledger: WalletLedger, tenant: str, open_dues: Sequence[Due]) -> WalletReport:
    """Settle outstanding finalised periods, then the open ones (see the module docstring)."""
    report = WalletReport(tenant)
    dues: dict[Period, Due] = {}
    for past in ledger.settlements(tenant):
        if past.outstanding > 0:
            period = Period.parse(past.period)
            dues[period] = Due(period, past.due, past.currency, final=True)
    for due in open_dues:
        dues[due.period] = due
    for period in sorted(dues):
        due = dues[period]
        try:
            report.settled.append(
                ledger.settle(
                    tenant, period, max(due.total, Decimal(0)), due.currency, final=due.final
                )
            )
        except InputError as exc:
            log.warning("tenant %s: wallet not settled for %s: %s", tenant, period, exc)
            report.error = exc.problem
    report.wallet = ledger.wallet(tenant)
    return report
