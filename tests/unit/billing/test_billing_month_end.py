"""The four ways the month end went wrong before billing moved into the ledger, each as
the claim it now holds (real SQLite ledger; the bill and status steps of the cycle):

- the October invoice is finalised after midnight, although status already shows November;
- a prepaid wallet burns October's charges rated after midnight;
- two operators that see totals of 20 and 21 take 21 from the wallet, not 7 + 8 on 13;
- an event dated inside a finalised period is accepted, never changes that period's
  rating or invoice, and is billed as late usage on the next open statement.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import TokenUsage
from kubemeter_operator.billing import statements
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.controller.reconcile import CycleFacts, TenantReconciler
from kubemeter_operator.events_api import StaticTokenStore, create_app
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage import Period

from support.timetravel import apply_merge_patch

OCT, NOV = Period(2026, 10), Period(2026, 11)
PLAN = PricePlan.model_validate({"metadata": {"name": "std"}, "spec": {
    "currency": "USD", "platformFee": "10", "meters": [
        {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
         "pricing": {"model": "flat", "unitPrice": "1"}}]}})  # fmt: skip
ACME = Tenant.model_validate({
    "metadata": {"name": "acme", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"pricePlanRef": {"name": "std"}, "namespaces": ["acme"],
             "wallet": {"enabled": True}}})  # fmt: skip
TOKEN = "acme-secret-token-0123456789abcdef"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        self.status = apply_merge_patch(self.status, patch["status"])

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((reason, message))


def t(day: int, h: int, m: int, s: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, h, m, s, tzinfo=UTC)


def tok(eid: str, n: int, at: datetime) -> TokenUsage:
    return TokenUsage(id=eid, model="m", prompt_tokens=n, timestamp=at)


class Operator:
    """The bill and status steps of one operator replica."""

    def __init__(self, ledger: Any) -> None:
        self.writer = Recorder()
        self.biller = Biller(ledger)
        self.reconciler = TenantReconciler(ledger, self.writer)

    def cycle(self, now: datetime, metered_until: datetime) -> None:
        tenants, plans = {"acme": ACME}, {"std": PLAN}
        report = self.biller.run(now, tenants, plans, metered_until)
        facts = CycleFacts(now, metered_until)
        asyncio.run(self.reconciler.reconcile_all(tenants, plans, facts, report))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    yield led
    led.close()


def test_october_invoice_is_finalised_after_midnight(ledger: Ledger) -> None:
    op = Operator(ledger)
    ledger.record_events("acme", [tok("a", 5000, t(31, 22, 0))])
    op.cycle(t(31, 23, 59), t(31, 23, 58, 30))
    op.cycle(t(1, 0, 0, 10, 11), t(31, 23, 59, 40))  # status moves to November here
    assert op.writer.status["period"] == "2026-11"
    assert op.writer.status["previousPeriod"]["state"] == "Closing"
    op.cycle(t(1, 1, 30, 0, 11), t(1, 1, 29, 30, 11))
    final = statements.final_statement(ledger, "acme", OCT)
    assert final is not None
    assert final.total == Decimal(15)
    assert [r for r, _ in op.writer.events].count("PeriodClosed") == 1
    assert op.writer.status["previousPeriod"] == {
        "period": "2026-10", "state": "Final", "currency": "USD", "total": "15.00"
    }  # fmt: skip


def test_wallet_burns_october_charges_rated_after_midnight(ledger: Ledger) -> None:
    ledger.topup("acme", Decimal(100), "USD", "t1")
    op = Operator(ledger)
    ledger.record_events("acme", [tok("a", 10000, t(31, 22, 0))])
    op.cycle(t(31, 23, 59), t(31, 23, 58, 30))
    assert ledger.wallet("acme").taken == Decimal(20)
    # metering commits the last October window after midnight: 5 more dollars of October
    ledger.record_events("acme", [tok("b", 5000, t(31, 23, 59, 50))])
    op.cycle(t(1, 0, 0, 30, 11), t(1, 0, 0, 0, 11))
    assert ledger.wallet("acme").taken == Decimal(35)  # October 25 (before its close) + 10
    op.cycle(t(1, 1, 30, 0, 11), t(1, 1, 29, 0, 11))  # October closes: nothing more due
    wallet = ledger.wallet("acme")
    assert (wallet.taken, wallet.balance, wallet.outstanding) == (35, 65, 0)
    paid = {s.period: s.paid for s in ledger.settlements("acme")}
    assert paid == {"2026-10": Decimal(25), "2026-11": Decimal(10)}


class SlowReads:
    """The real ledger, with reads that take a while: two operators interleave."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._ledger, name)

        def slow(*a: Any, **k: Any) -> Any:
            out = fn(*a, **k)
            if name in ("period_totals", "get_checkpoint", "wallet", "settlements"):
                time.sleep(0.3)
            return out

        return slow


def test_two_operators_take_only_what_was_charged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger.open(url) as ledger, Ledger.open(url) as other:
        ledger.topup("acme", Decimal(100), "USD", "t1")
        now = t(20, 12, 0, 0, 11)
        ledger.record_events("acme", [tok("a", 3000, now)])  # total 13
        Operator(ledger).cycle(now, now)
        assert ledger.wallet("acme").taken == Decimal(13)
        ledger.record_events("acme", [tok("b", 7000, now)])  # total 20 ...
        barrier = threading.Barrier(2)

        def run(led: Ledger, extra: str | None) -> None:
            barrier.wait()
            if extra:  # ... and 21 for the second, which reads after it
                time.sleep(0.1)
                led.record_events("acme", [tok(extra, 1000, now)])
            Operator(SlowReads(led)).cycle(now, now)

        threads = [threading.Thread(target=run, args=x) for x in ((ledger, None), (other, "c"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wallet = ledger.wallet("acme")
        assert wallet.taken == Decimal(21)
        assert wallet.topped_up - wallet.taken == wallet.balance


def test_event_in_a_finalised_period_is_booked_as_late_usage(ledger: Ledger) -> None:
    ledger.set_terms("acme", OCT, PLAN.spec)
    ledger.set_terms("acme", NOV, PLAN.spec)
    ledger.record_events("acme", [tok("a", 5000, t(20, 0, 0))])
    from kubemeter_operator.billing.close import close_period

    assert close_period(ledger, "acme", OCT, prepaid=False).stored
    invoice = statements.final_statement(ledger, "acme", OCT)
    assert invoice is not None
    october = ledger.period_totals("acme", OCT)

    async def post() -> int:
        app = create_app(
            ledger, StaticTokenStore({"acme": TOKEN}), clock=lambda: t(2, 12, 0, 0, 11)
        )
        async with TestClient(TestServer(app)) as client:
            resp = await client.post(
                "/v1/events",
                json=[{"id": "late", "kind": "tokens", "model": "m", "promptTokens": 2000,
                       "timestamp": "2026-10-31T23:00:00Z"}],
                headers={"Authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
            return resp.status

    assert asyncio.run(post()) == 202
    assert ledger.period_totals("acme", OCT) == october  # October's rating is untouched
    assert statements.final_statement(ledger, "acme", OCT) == invoice
    november = statements.running_statement(ledger, "acme", NOV)
    (adjustment,) = november.adjustments
    assert adjustment.description == "late usage from 2026-10"
    assert adjustment.amount == Decimal("2.00")
    assert november.total == Decimal("12.00")  # the November fee + October's late 2.00
    assert ledger.period_totals("acme", NOV) == {}  # November's own usage: none
