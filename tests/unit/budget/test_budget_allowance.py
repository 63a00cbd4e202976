"""The allowance answer (pure): allowed unless the budget decision stops the tenant's work;
Retry-After until the period resets, or a minute for an empty wallet."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.budget.allowance import WALLET_RETRY_S, allowance
from kubemeter_operator.budget.decision import WalletView
from kubemeter_operator.usage import Period

NOV = Period.parse("2026-11")


def tenant(**spec: Any) -> Tenant:
    body = {"pricePlanRef": {"name": "p"}, "namespaces": ["a"], **spec}
    return Tenant.model_validate({"metadata": {"name": "acme"}, "spec": body})


def test_credits_count_as_nothing_spent_and_no_budget_allows() -> None:
    a = allowance(tenant(), NOV, spent=Decimal("-3"), currency="USD", wallet=None)
    assert a.allowed
    body = a.to_api()
    assert (body["spent"], body["limit"], body["remaining"]) == ("0", None, None)
    assert "refusedFor" not in body


def test_retry_after_is_the_period_end_and_at_least_a_second() -> None:
    a = allowance(tenant(budget={"limit": "10", "enforcement": "scaleDown"}), NOV,
                  spent=Decimal(10), currency="USD", wallet=None)  # fmt: skip
    assert not a.allowed
    assert a.to_api()["refusedFor"] == "budgetExceeded"
    assert a.retry_after_s(datetime(2026, 11, 30, 23, 0, tzinfo=UTC)) == 3600
    assert a.retry_after_s(datetime(2026, 11, 30, 23, 59, 59, 500000, tzinfo=UTC)) == 1
    assert a.retry_after_s(datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)) == 1


def test_an_empty_wallet_retries_after_a_minute() -> None:
    a = allowance(tenant(wallet={"enabled": True}), NOV, spent=Decimal(1), currency="USD",
                  wallet=WalletView(Decimal(0), Decimal("0.5")))  # fmt: skip
    assert not a.allowed
    assert a.retry_after_s(datetime(2026, 11, 2, tzinfo=UTC)) == WALLET_RETRY_S
    assert a.to_api()["walletBalance"] == "0"
