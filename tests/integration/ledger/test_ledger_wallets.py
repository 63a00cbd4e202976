"""Wallets: idempotent top-ups; charges settled per period under the wallet row's lock,
never below zero, never more than is due, money conserved under concurrent load."""

from __future__ import annotations

import random
import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.schema import wallet_entry, wallet_period
from kubemeter_operator.usage import Period

NOV, DEC = Period(2026, 11), Period(2026, 12)
D = Decimal


def test_topups_are_idempotent_and_settles_take_only_the_difference(ledger: Ledger) -> None:
    assert ledger.topup("acme", D("10.50"), "USD", "t1") == D("10.5")
    assert ledger.topup("acme", D("10.50"), "USD", "t1") == D("10.5")
    with pytest.raises(ConflictError, match="t1"):
        ledger.topup("acme", D("11"), "USD", "t1")
    s = ledger.settle("acme", NOV, D("4.25"), "USD")
    assert (s.due, s.paid, s.taken, s.outstanding) == (D("4.25"), D("4.25"), D("4.25"), 0)
    assert s.balance == D("6.25")
    again = ledger.settle("acme", NOV, D("4.25"), "USD")
    assert (again.taken, again.balance, again.paid) == (0, D("6.25"), D("4.25"))
    short = ledger.settle("acme", NOV, D("100"), "USD")  # the balance runs dry
    assert (short.taken, short.outstanding, short.balance) == (D("6.25"), D("89.5"), 0)
    assert ledger.wallet("acme").outstanding == D("89.5")
    ledger.topup("acme", D("50"), "USD", "t2")
    paid_later = ledger.settle("acme", NOV, D("100"), "USD")  # the top-up pays the shortfall
    assert (paid_later.taken, paid_later.outstanding, paid_later.balance) == (50, D("39.5"), 0)
    stale = ledger.settle("acme", NOV, D("50"), "USD")  # a lower total while open: nothing
    assert (stale.taken, stale.due, stale.paid) == (0, D(100), D("60.5"))
    refund = ledger.settle("acme", NOV, D("50"), "USD", final=True)  # the invoice: refund
    assert (refund.taken, refund.paid, refund.outstanding) == (D("-10.5"), 50, 0)
    assert refund.balance == D("10.5")
    with pytest.raises(InputError) as err:
        ledger.settle("acme", DEC, D("1"), "EUR")
    assert err.value.field == "currency"
    assert "never converts" in err.value.problem
    with pytest.raises(InputError) as err:
        ledger.topup("acme", D("1"), "EUR", "t3")
    assert err.value.field == "currency"
    with pytest.raises(InputError) as err:
        ledger.topup("acme", D("-1"), "USD", "t4")
    assert err.value.field == "amount"
    w = ledger.wallet("acme")
    assert (w.topped_up, w.taken, w.balance) == (D("60.5"), D(50), D("10.5"))
    nobody = ledger.settle("nobody", NOV, D("5"), "USD")  # prepaid, never topped up
    assert (nobody.taken, nobody.outstanding) == (0, D(5))


def test_two_settles_of_one_period_take_the_larger_total_once(ledger_url: str) -> None:
    """Two operators that see totals of 20 and 21 take 21 between them, in any order."""
    for order in ((D(20), D(21)), (D(21), D(20))):
        with Ledger.open(ledger_url) as a, Ledger.open(ledger_url) as b:
            tenant = f"t{order[0]}"
            a.topup(tenant, D(100), "USD", "seed")
            a.settle(tenant, NOV, D(13), "USD")
            barrier = threading.Barrier(2)

            def run(
                led: Ledger, due: Decimal, tenant: str = tenant, barrier: Any = barrier
            ) -> None:
                barrier.wait()
                led.settle(tenant, NOV, due, "USD")

            threads = [threading.Thread(target=run, args=(led, due))
                       for led, due in zip((a, b), order, strict=True)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            w = a.wallet(tenant)
            assert w.taken == D(21)
            assert w.topped_up - w.taken == w.balance


def _hammer(ledger: Ledger, worker: int, ops: int) -> None:
    rng = random.Random(worker)
    for i in range(ops):
        if rng.random() < 0.3:
            amount = D(rng.randrange(1, 5000)).scaleb(-2)
            key = f"w{worker}-{i}"
            first = ledger.topup("acme", amount, "USD", key)
            if i % 5 == 0:
                assert ledger.topup("acme", amount, "USD", key) == first
        else:
            period = Period(2026, rng.randrange(1, 13))
            due = D(rng.randrange(0, 20000)).scaleb(-2)
            s = ledger.settle("acme", period, due, "USD", final=rng.random() < 0.2)
            assert s.balance >= 0
            assert 0 <= s.paid <= s.due


def test_concurrent_settles_and_topups_conserve(ledger_url: str) -> None:
    ledgers = [Ledger.open(ledger_url) for _ in range(2)]
    try:
        ledgers[0].topup("acme", D("50"), "USD", "seed")
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                _hammer(ledgers[n % 2], n, 40)
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        w = ledgers[0].wallet("acme")
        with ledgers[0].engine.connect() as conn:
            entries = conn.execute(select(wallet_entry)).all()
            periods = conn.execute(select(wallet_period)).all()
        topups = sum((e.amount for e in entries if e.kind == "topup"), D(0))
        taken = sum((e.taken for e in entries if e.kind != "topup"), D(0))
        assert w.balance >= 0
        assert topups - taken == w.balance
        assert (w.topped_up, w.taken) == (topups, taken)
        assert sum((p.paid for p in periods), D(0)) == taken
        for p in periods:
            assert 0 <= p.paid <= p.due
            mine = [e for e in entries if e.period == p.period]
            assert sum((e.taken for e in mine), D(0)) == p.paid
        for e in entries:
            assert e.balance_after >= 0
    finally:
        for led in ledgers:
            led.close()
