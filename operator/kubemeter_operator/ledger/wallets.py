"""Prepaid wallets: idempotent top-ups and burns that conserve money.

Every operation is one transaction holding the wallet row's lock (PostgreSQL: the row is
created if missing, then `SELECT ... FOR UPDATE`; SQLite: the transaction began with
`BEGIN IMMEDIATE`, which holds the database write lock). The entry key is checked under that
lock, so a retried operation is answered from its entry: same amount -> the original
result; different amount (or kind) -> ConflictError. Balance never goes below zero: a burn
larger than the balance takes what is left and reports the shortfall. Invariant, kept on
the wallet row and checkable from the entries: topped_up - taken == balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, select

from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger.columns import WIDE, exact_problem, plain
from kubemeter_operator.ledger.schema import wallet, wallet_entry
from kubemeter_operator.ledger.usage import _insert
from kubemeter_operator.money import CURRENCIES

ZERO = Decimal(0)


@dataclass(frozen=True)
class BurnResult:
    taken: Decimal
    """What the burn took from the balance."""
    shortfall: Decimal
    """What it could not take (the balance ran out)."""
    balance: Decimal
    """The balance right after this burn."""


@dataclass(frozen=True)
class WalletBalance:
    tenant: str
    currency: str | None
    balance: Decimal
    topped_up: Decimal
    taken: Decimal


def _check_amount(amount: Decimal, *, positive: bool) -> None:
    if not isinstance(amount, Decimal) or isinstance(amount, bool):
        raise InputError("amount", "must be a Decimal")
    problem = exact_problem(amount)
    if problem:
        raise InputError("amount", problem)
    if amount < 0 or (positive and amount == 0):
        raise InputError("amount", "must be greater than 0" if positive else "must not be negative")


def _check_key(key: str) -> None:
    if not key or len(key) > 200:
        raise InputError("key", "required, at most 200 characters")


def _lock(conn: Connection, tenant: str, now: datetime) -> dict[str, object]:
    conn.execute(
        _insert(conn, wallet)
        .values(
            tenant=tenant, currency=None, balance=ZERO, topped_up=ZERO, taken=ZERO, updated_at=now
        )
        .on_conflict_do_nothing(index_elements=["tenant"])
    )
    row = conn.execute(select(wallet).where(wallet.c.tenant == tenant).with_for_update()).one()
    return dict(row._mapping)


def _entry(conn: Connection, tenant: str, key: str) -> dict[str, object] | None:
    row = conn.execute(
        select(wallet_entry).where(wallet_entry.c.tenant == tenant, wallet_entry.c.key == key)
    ).first()
    return None if row is None else dict(row._mapping)


def topup(
    conn: Connection, tenant: str, amount: Decimal, currency: str, key: str, now: datetime
) -> Decimal:
    if not tenant:
        raise InputError("tenant", "required")
    _check_amount(amount, positive=True)
    _check_key(key)
    if currency not in CURRENCIES:
        raise InputError("currency", f"{currency!r} is not a supported ISO 4217 code")
    w = _lock(conn, tenant, now)
    entry = _entry(conn, tenant, key)
    if entry is not None:
        if entry["kind"] != "topup" or entry["amount"] != amount or entry["currency"] != currency:
            raise ConflictError(
                f"wallet {tenant} key {key}",
                f"already used for a {entry['kind']} of {entry['amount']} {entry['currency']}",
            )
        return _dec(entry["balance_after"])
    if w["currency"] is not None and w["currency"] != currency:
        raise InputError(
            "currency", f"the wallet of {tenant} is in {w['currency']}, not {currency}"
        )
    balance = _dec(WIDE.add(_dec(w["balance"]), amount))
    conn.execute(
        wallet.update()
        .where(wallet.c.tenant == tenant)
        .values(
            currency=currency,
            balance=balance,
            topped_up=WIDE.add(_dec(w["topped_up"]), amount),
            updated_at=now,
        )
    )
    conn.execute(
        wallet_entry.insert().values(
            tenant=tenant,
            key=key,
            kind="topup",
            currency=currency,
            amount=amount,
            taken=ZERO,
            shortfall=ZERO,
            balance_after=balance,
            created_at=now,
        )
    )
    return balance


def burn(conn: Connection, tenant: str, amount: Decimal, key: str, now: datetime) -> BurnResult:
    if not tenant:
        raise InputError("tenant", "required")
    _check_amount(amount, positive=False)
    _check_key(key)
    w = _lock(conn, tenant, now)
    entry = _entry(conn, tenant, key)
    if entry is not None:
        if entry["kind"] != "burn" or entry["amount"] != amount:
            raise ConflictError(
                f"wallet {tenant} key {key}",
                f"already used for a {entry['kind']} of {entry['amount']}",
            )
        return BurnResult(
            _dec(entry["taken"]), _dec(entry["shortfall"]), _dec(entry["balance_after"])
        )
    balance = _dec(w["balance"])
    taken = _dec(min(balance, amount))
    shortfall = _dec(WIDE.subtract(amount, taken))
    balance = _dec(WIDE.subtract(balance, taken))
    conn.execute(
        wallet.update()
        .where(wallet.c.tenant == tenant)
        .values(balance=balance, taken=WIDE.add(_dec(w["taken"]), taken), updated_at=now)
    )
    conn.execute(
        wallet_entry.insert().values(
            tenant=tenant,
            key=key,
            kind="burn",
            currency=w["currency"],
            amount=amount,
            taken=taken,
            shortfall=shortfall,
            balance_after=balance,
            created_at=now,
        )
    )
    return BurnResult(taken, shortfall, balance)


def get_balance(conn: Connection, tenant: str) -> WalletBalance:
    row = conn.execute(select(wallet).where(wallet.c.tenant == tenant)).first()
    if row is None:
        return WalletBalance(tenant, None, ZERO, ZERO, ZERO)
    return WalletBalance(tenant, row.currency, row.balance, row.topped_up, row.taken)


def _dec(value: object) -> Decimal:
    assert isinstance(value, Decimal)
    return Decimal(plain(value))
