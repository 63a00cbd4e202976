"""Billing over time, proven on the time-travel harness: the whole operator cycle (meter ->
bill -> status) through simulated months against real SQLite and PostgreSQL ledgers. After
each scenario `check_invariants` holds: every finalised invoice equals an independent
recomputation from the raw usage, each period is finalised exactly once, wallets conserve
money and never go negative, and nothing is billed twice or lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from kubemeter_operator.api.usage import TokenUsage
from kubemeter_operator.billing import statements
from kubemeter_operator.ledger import Ledger, LedgerTx
from kubemeter_operator.usage import Period

from support.postgres import create_database, drop_database
from support.timetravel import TimeTravel, check_invariants, crash_once

pytestmark = pytest.mark.integration

SEP, OCT, NOV, DEC = (Period(2026, m) for m in (9, 10, 11, 12))
JAN = Period(2027, 1)
START = datetime(2026, 9, 28, 12, tzinfo=UTC)

STD: dict[str, Any] = {
    "currency": "USD",
    "platformFee": "100",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour", "included": "10",
         "pricing": {"model": "graduated", "tiers": [
             {"upTo": "100", "unitPrice": "2.50"}, {"unitPrice": "2.00"}]}},
        {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
         "pricing": {"model": "flat", "unitPrice": "0.01"}},
    ],
}  # fmt: skip


def tokens(eid: str, n: int, at: datetime) -> TokenUsage:
    return TokenUsage(id=eid, model="llama", prompt_tokens=n, timestamp=at)


@pytest.fixture
def tt(ledger_url: str) -> Iterator[TimeTravel]:
    harness = TimeTravel(ledger_url, start=START)
    harness.add_plan("std", STD)
    harness.add_tenant("acme", plan="std", namespaces=["acme"])
    harness.add_tenant("globex", plan="std", namespaces=["globex"], discountPercent="10")
    yield harness
    harness.close()


def at(period: Period, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(period.year, period.month, day, hour, minute, tzinfo=UTC)


def test_three_months_two_boundaries(tt: TimeTravel) -> None:
    tt.gpu("acme", "train-0", start=START)
    tt.gpu("globex", "infer-0", start=at(OCT, 10), stop=at(NOV, 20), utilisation="0.9")
    tt.gpu("acme", "train-1", start=at(OCT, 31, 23, 30), stop=at(NOV, 1, 0, 40))
    tt.advance(at(OCT, 15), every=timedelta(hours=6))
    tt.post("acme", [tokens("a1", 120_000, at(OCT, 15))])
    tt.advance(at(OCT, 31, 23), every=timedelta(hours=6))
    tt.advance(at(NOV, 1, 3), every=timedelta(minutes=5))  # the first boundary, closely
    tt.advance(at(NOV, 30, 23), every=timedelta(hours=6))
    tt.post("globex", [tokens("g1", 7_000, at(NOV, 30, 22))])
    tt.advance(at(DEC, 1, 2), every=timedelta(minutes=5))  # the second boundary
    tt.advance(at(DEC, 10), every=timedelta(hours=12))
    report = check_invariants(tt)
    finals = set(report.finalised)
    assert {("acme", "2026-09"), ("acme", "2026-10"), ("acme", "2026-11"),
            ("globex", "2026-10"), ("globex", "2026-11")} <= finals  # fmt: skip
    assert ("acme", "2026-12") not in finals
    # status shows December, and November as final
    status = tt.kube.status["acme"]
    assert status["period"] == "2026-12"
    assert status["previousPeriod"]["state"] == "Final"
    nov = statements.final_statement(tt.ledger, "acme", NOV)
    assert nov is not None
    assert status["previousPeriod"]["total"] == str(nov.total)
    # all of November for train-0, and train-1's 39 scraped minutes after midnight (its
    # series stops with the pod at 00:40; the last sample, at 00:39, holds what it used)
    assert nov.line("gpu").quantity == 30 * 24 * 3_600_000 + 39 * 60_000
    assert tt.kube.reasons("acme").count("PeriodClosed") == 3
    assert tt.kube.reasons("globex").count("PeriodClosed") == 3  # September: the fee alone


def test_restarts_at_the_boundary_and_in_the_middle_of_a_close(
    tt: TimeTravel, monkeypatch: pytest.MonkeyPatch
) -> None:
    tt.gpu("acme", "train-0", start=START)
    tt.gpu("globex", "infer-0", start=START, utilisation="0.7")
    tt.advance(at(OCT, 31, 23, 59), every=timedelta(hours=4))
    tt.restart()  # a minute before midnight
    tt.advance(at(NOV, 1, 0, 1), every=timedelta(minutes=1))
    tt.restart()  # a minute after
    # the October close dies after it stored the statement, before its transaction commits
    died = crash_once(LedgerTx, "set_closed_through", after=True)
    tt.advance(at(NOV, 1, 2), every=timedelta(minutes=5))
    assert died == [1]
    assert len(tt.crashes) == 1
    assert statements.final_statement(tt.ledger, "acme", OCT) is not None
    # the November close: the PeriodClosed Event is posted, then the operator dies before
    # the ledger marks it announced; the next operator posts it again (at least once)
    crash_once(Ledger, "mark_announced")
    tt.advance(at(NOV, 30, 23, 59), every=timedelta(hours=8))
    tt.restart()
    tt.advance(at(DEC, 1, 3), every=timedelta(minutes=5))
    assert len(tt.crashes) == 2
    # the operator is down for three days; a new one catches up and closes what is due
    down_from = tt.now
    tt.scraper.advance_to(at(DEC, 31, 22))
    tt.now = at(DEC, 31, 22)
    tt.restart()
    tt.advance(at(JAN, 2), every=timedelta(hours=1))
    assert tt.now - down_from > timedelta(days=3)
    check_invariants(tt, closes_announced_once=False)
    for tenant in ("acme", "globex"):
        closed = [e.message for e in tt.kube.events
                  if e.tenant == tenant and e.reason == "PeriodClosed"]  # fmt: skip
        assert sum("period 2026-10 " in m for m in closed) == 1
        assert sum("period 2026-11 " in m for m in closed) == (2 if tenant == "acme" else 1)
        assert sum("period 2026-12 " in m for m in closed) == 1


def test_late_events_before_and_after_finalisation(tt: TimeTravel) -> None:
    tt.gpu("acme", "train-0", start=START)
    tt.advance(at(NOV, 1, 0, 30), every=timedelta(hours=6))
    # half an hour after midnight, inside the grace: still October's invoice
    tt.post("acme", [tokens("in-grace", 300_000, at(OCT, 31, 23, 30))])
    tt.advance(at(NOV, 2), every=timedelta(minutes=10))
    october = statements.final_statement(tt.ledger, "acme", OCT)
    assert october is not None
    assert october.line("prompt").quantity == 300_000
    # a day later: late usage, billed on November at October's terms
    tt.post("acme", [tokens("late-1", 50_000, at(OCT, 31, 23, 40))])
    november = statements.running_statement(tt.ledger, "acme", NOV)
    (adjustment,) = november.adjustments
    assert (adjustment.period, adjustment.amount) == ("2026-10", Decimal("0.50"))
    assert statements.final_statement(tt.ledger, "acme", OCT) == october  # never changes
    assert tt.kube.status["acme"]["previousPeriod"]["state"] == "Final"
    tt.advance(at(NOV, 2, 1), every=timedelta(minutes=10))
    assert tt.kube.status["acme"]["adjustments"] == "0.50"
    # after November is final too, late October usage goes to December
    tt.advance(at(DEC, 2), every=timedelta(hours=6))
    tt.post("acme", [tokens("late-2", 10_000, at(OCT, 30, 12))])
    tt.advance(at(DEC, 3), every=timedelta(hours=6))
    final_nov = statements.final_statement(tt.ledger, "acme", NOV)
    assert final_nov is not None
    assert [a.period for a in final_nov.adjustments] == ["2026-10"]
    december = statements.running_statement(tt.ledger, "acme", DEC)
    assert [(a.period, a.amount) for a in december.adjustments] == [("2026-10", Decimal("0.10"))]
    report = check_invariants(tt)
    assert report.adjustments[("acme", "2026-10")] == Decimal("0.60")


def test_top_ups_on_both_sides_of_midnight(tt: TimeTravel) -> None:
    tt.add_tenant("acme", plan="std", namespaces=["acme"], wallet={"enabled": True})
    tt.gpu("acme", "train-0", start=START)
    tt.topup("acme", "3000", "t-sep")
    tt.advance(at(OCT, 31, 23, 50), every=timedelta(hours=6))
    tt.topup("acme", "250", "t-oct-31")
    tt.advance(at(NOV, 1, 0, 10), every=timedelta(minutes=2))
    tt.topup("acme", "250", "t-nov-1")
    tt.topup("acme", "250", "t-nov-1")  # a retried top-up: counted once
    tt.topups["acme"] -= Decimal(250)
    tt.advance(at(NOV, 3), every=timedelta(minutes=30))
    check_invariants(tt)
    paid = {s.period: s for s in tt.ledger.settlements("acme")}
    october = statements.final_statement(tt.ledger, "acme", OCT)
    assert october is not None
    assert paid["2026-10"].paid == october.total
    assert paid["2026-11"].paid == statements.running_statement(tt.ledger, "acme", NOV).total
    wallet = tt.ledger.wallet("acme")
    assert wallet.outstanding == 0
    assert tt.kube.status["acme"]["wallet"]["balance"] == str(wallet.balance)


def test_a_plan_edit_mid_period_reprices_the_open_period_only(tt: TimeTravel) -> None:
    tt.gpu("acme", "train-0", start=START)
    tt.advance(at(NOV, 15), every=timedelta(hours=6))
    october = statements.final_statement(tt.ledger, "acme", OCT)
    assert october is not None
    cheaper = {**STD, "meters": [{**STD["meters"][0], "pricing": {"model": "flat",
               "unitPrice": "1.00"}}, STD["meters"][1]]}  # fmt: skip
    tt.add_plan("std", cheaper)
    tt.add_tenant("globex", plan="std", namespaces=["globex"], discountPercent="25")
    tt.advance(at(NOV, 16), every=timedelta(hours=6))
    # the terms at close apply to the whole period: all of November at 1.00 per GPU-hour
    nov = statements.running_statement(tt.ledger, "acme", NOV)
    gpu = nov.line("gpu")
    assert gpu.amount == (gpu.billable * Decimal("1.00")).quantize(Decimal("0.01"))
    assert statements.final_statement(tt.ledger, "acme", OCT) == october  # never repriced
    # a plan that switches currency mid-period: November keeps USD, with a condition
    tt.add_plan("std", {**cheaper, "currency": "EUR"})
    tt.advance(at(NOV, 20), every=timedelta(hours=6))
    condition = next(c for c in tt.kube.status["acme"]["conditions"]
                     if c["type"] == "CurrencyMismatch")  # fmt: skip
    assert condition["status"] == "True"
    assert "2026-12" in condition["message"]
    assert "CurrencyMismatch" in tt.kube.reasons("acme")
    assert statements.running_statement(tt.ledger, "acme", NOV).currency == "USD"
    tt.advance(at(DEC, 2), every=timedelta(hours=6))
    assert statements.running_statement(tt.ledger, "acme", DEC).currency == "EUR"
    final_nov = statements.final_statement(tt.ledger, "acme", NOV)
    assert final_nov is not None
    assert final_nov.currency == "USD"
    assert final_nov.discount_percent == 0
    assert statements.final_statement(tt.ledger, "globex", NOV).discount_percent == 25  # type: ignore[union-attr]
    check_invariants(tt)


def test_a_wallet_that_runs_dry_mid_month(tt: TimeTravel) -> None:
    tt.add_tenant("acme", plan="std", namespaces=["acme"], wallet={"enabled": True,
                  "lowBalanceThreshold": "100"})  # fmt: skip
    tt.gpu("acme", "train-0", start=START)
    tt.gpu("acme", "train-1", start=START)
    tt.topup("acme", "1000", "t1")
    tt.advance(at(OCT, 25), every=timedelta(hours=6))
    wallet = tt.ledger.wallet("acme")
    assert wallet.balance == 0
    assert wallet.outstanding > 0
    status = tt.kube.status["acme"]["wallet"]
    assert Decimal(status["shortfall"]) == wallet.outstanding
    assert status["low"] is True
    assert tt.kube.reasons("acme").count("WalletShortfall") == 1
    assert "WalletLow" in tt.kube.reasons("acme") or "WalletEmpty" in tt.kube.reasons("acme")
    tt.advance(at(NOV, 5), every=timedelta(hours=6))
    short_oct = {s.period: s for s in tt.ledger.settlements("acme")}["2026-10"]
    assert short_oct.outstanding > 0
    # a top-up pays the oldest debt first
    tt.topup("acme", "5000", "t2")
    tt.advance(at(NOV, 5, 6), every=timedelta(hours=6))
    settled = {s.period: s for s in tt.ledger.settlements("acme")}
    assert settled["2026-09"].outstanding == settled["2026-10"].outstanding == 0
    check_invariants(tt)


@pytest.fixture
def pg_ledger_url(postgres_url: str) -> Iterator[str]:
    url, name = create_database(postgres_url)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


def test_two_operators_on_one_postgresql_ledger(pg_ledger_url: str) -> None:
    """Two replicas run every cycle at the same instant, in two threads, on one PostgreSQL
    ledger: windows, closes and wallet burns happen once; only PeriodClosed may be posted
    by both (at least once: one active replica is the leader-election issue's)."""
    tt = TimeTravel(pg_ledger_url, start=START)
    try:
        tt.add_plan("std", STD)
        tt.add_tenant("acme", plan="std", namespaces=["acme"], wallet={"enabled": True})
        tt.add_tenant("globex", plan="std", namespaces=["globex"])
        tt.gpu("acme", "train-0", start=START)
        tt.gpu("globex", "infer-0", start=START)
        tt.topup("acme", "2500", "t1")
        tt.replica()
        tt.advance(at(OCT, 31, 22), every=timedelta(hours=6))
        tt.post("acme", [tokens("a1", 400_000, at(OCT, 31, 21))])
        tt.advance(at(NOV, 1, 2), every=timedelta(minutes=5))
        tt.topup("acme", "500", "t2")
        tt.advance(at(NOV, 3), every=timedelta(hours=1))
        report = check_invariants(tt, closes_announced_once=False)
        assert {("acme", "2026-10"), ("globex", "2026-10")} <= set(report.finalised)
        wallet = tt.ledger.wallet("acme")
        october = report.finalised[("acme", "2026-10")]
        september = report.finalised[("acme", "2026-09")]
        november = statements.running_statement(tt.ledger, "acme", NOV)
        # the wallet paid each period exactly what it charged (it never ran dry)
        assert wallet.outstanding == 0
        assert wallet.taken == september.total + october.total + november.total
    finally:
        tt.close()
