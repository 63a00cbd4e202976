"""Wallets: idempotent top-ups and burns, never below zero, money conserved under load."""

from __future__ import annotations

import random
import threading
from decimal import Decimal

import pytest
from sqlalchemy import select

from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.schema import wallet_entry


def test_topup_burn_idempotent(ledger: Ledger) -> None:
    assert ledger.topup("acme", Decimal("10.50"), "USD", "t1") == Decimal("10.5")
    assert ledger.topup("acme", Decimal("10.50"), "USD", "t1") == Decimal("10.5")
    with pytest.raises(ConflictError, match="t1"):
        ledger.topup("acme", Decimal("11"), "USD", "t1")
    r = ledger.burn("acme", Decimal("4.25"), "b1")
    assert (r.taken, r.shortfall, r.balance) == (Decimal("4.25"), 0, Decimal("6.25"))
    assert ledger.burn("acme", Decimal("4.25"), "b1") == r
    with pytest.raises(ConflictError, match="b1"):
        ledger.burn("acme", Decimal("1"), "b1")
    big = ledger.burn("acme", Decimal("100"), "b2")
    assert (big.taken, big.shortfall, big.balance) == (Decimal("6.25"), Decimal("93.75"), 0)
    assert ledger.balance("acme") == 0
    with pytest.raises(InputError) as err:
        ledger.topup("acme", Decimal("1"), "EUR", "t2")
    assert err.value.field == "currency"
    with pytest.raises(InputError) as err:
        ledger.topup("acme", Decimal("-1"), "USD", "t3")
    assert err.value.field == "amount"
    assert ledger.burn("nobody", Decimal("5"), "x").shortfall == Decimal(5)


def _hammer(ledger: Ledger, worker: int, ops: int) -> None:
    rng = random.Random(worker)
    for i in range(ops):
        amount = Decimal(rng.randrange(1, 5000)).scaleb(-2)
        key = f"w{worker}-{i}"
        if rng.random() < 0.4:
            first: object = ledger.topup("acme", amount, "USD", key)
            retry: object = ledger.topup("acme", amount, "USD", key) if i % 5 == 0 else first
        else:
            first = ledger.burn("acme", amount, key)
            retry = ledger.burn("acme", amount, key) if i % 5 == 0 else first
        assert retry == first  # a retried key is answered from its entry


def test_concurrent_burns_and_topups_conserve(ledger_url: str) -> None:
    ledgers = [Ledger.open(ledger_url) for _ in range(2)]
    try:
        ledgers[0].topup("acme", Decimal("50"), "USD", "seed")
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
        assert len(entries) == 8 * 40 + 1
        topups = sum((e.amount for e in entries if e.kind == "topup"), Decimal(0))
        taken = sum((e.taken for e in entries if e.kind == "burn"), Decimal(0))
        assert w.balance >= 0
        assert topups - taken == w.balance
        assert (w.topped_up, w.taken) == (topups, taken)
        for e in entries:
            assert e.balance_after >= 0
            if e.kind == "burn":
                assert e.taken + e.shortfall == e.amount
                assert e.shortfall == 0 or e.balance_after == 0
    finally:
        for led in ledgers:
            led.close()
