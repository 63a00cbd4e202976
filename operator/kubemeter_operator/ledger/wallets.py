"""Prepaid wallets: idempotent top-ups, and per-period settlement of charges, conserving
money.

Every operation is one transaction holding the wallet row's lock (PostgreSQL: the row is
created if missing, then `SELECT ... FOR UPDATE`; SQLite: the transaction began with
`BEGIN IMMEDIATE`, which holds the database write lock).

- Top-ups are idempotent by key (checked under the lock): the same key and amount answer
  the original result; another amount or kind is a ConflictError.
- Charges are settled per period (`settle`): under the lock, read what this period is due
  and has paid (`wallet_period`), then take the difference from the balance. A burn larger
  than the balance takes what is left; the rest stays outstanding (the shortfall) and is
  taken by a later settle once the balance allows. While a period is open, settles only
  ever take (a stale, lower total from a slower replica changes nothing); the final settle
  at the period's close (`final=True`) also refunds what was paid above the final total (a
  plan edit that lowered it). Two settles of the same period, in any order or at once, take
  the larger total once between them: never more than was charged.
- A settle in another currency than the wallet's is an InputError, never a conversion.

Invariants, checkable from the rows: topped_up - taken == balance >= 0; per period
paid + outstanding == due; taken == sum of paid over periods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, func, select

from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger.columns import WIDE, exact_problem, plain
from kubemeter_operator.ledger.schema import wallet, wallet_entry, wallet_period
from kubemeter_operator.ledger.usage import _insert
from kubemeter_operator.money import CURRENCIES, check_currency

ZERO = Decimal(0)


@dataclass(frozen=True)
class WalletBalance:
    tenant: str
    currency: str | None
    balance: Decimal
    topped_up: Decimal
    taken: Decimal
    """Net of refunds."""
    outstanding: Decimal = ZERO
    """Charges the wallet could not pay yet (the shortfall), over all periods."""


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


@dataclass(frozen=True)
class Settlement:
    """The state of one period's charges against the wallet after a settle."""

    period: str
    currency: str
    due: Decimal
    """What the period's statement charges (the running or final total)."""
    paid: Decimal
    """What the wallet has paid toward it."""
    taken: Decimal
    """Taken by this settle (negative: refunded)."""
    balance: Decimal
    """The balance right after this settle."""

    @property
    def outstanding(self) -> Decimal:
        """What the wallet could not pay (the shortfall)."""
        return self.due - self.paid


def settle(
    conn: Connection,
    tenant: str,
    period: str,
    due: Decimal,
    currency: str,
    now: datetime,
    *,
    final: bool = False,
) -> Settlement:
    """Pay `due` (the period's charged total so far; with `final`, its invoice total) from
    the wallet, as far as the balance goes."""
    if not tenant:
        raise InputError("tenant", "required")
    _check_amount(due, positive=False)
    check_currency(currency)
    w = _lock(conn, tenant, now)
    wallet_currency = w["currency"]
    if wallet_currency is not None and wallet_currency != currency:
        raise InputError(
            "currency",
            f"the wallet of {tenant} is in {wallet_currency}; charges of {period} are in "
            f"{currency} (kubemeter never converts currencies)",
        )
    row = conn.execute(
        select(wallet_period).where(wallet_period.c.tenant == tenant,
                                    wallet_period.c.period == period)
    ).first()  # fmt: skip
    paid = _dec(row.paid) if row is not None else ZERO
    balance = _dec(w["balance"])
    if row is not None and not final and due < _dec(row.due):
        due = _dec(row.due)  # an open period's due only grows (a stale reader's total)
    difference = _dec(WIDE.subtract(due, paid))
    refund = difference if final else ZERO  # a negative difference: paid above the total
    take = min(balance, difference) if difference > 0 else refund
    if row is not None and take == 0 and _dec(row.due) == due:
        return Settlement(period, currency, due, paid, ZERO, balance)
    balance = _dec(WIDE.subtract(balance, take))
    paid = _dec(WIDE.add(paid, take))
    values = {"currency": currency, "due": due, "paid": paid, "updated_at": now}
    if row is None:
        conn.execute(wallet_period.insert().values(tenant=tenant, period=period, **values))
    else:
        conn.execute(
            wallet_period.update()
            .where(wallet_period.c.tenant == tenant, wallet_period.c.period == period)
            .values(**values)
        )
    conn.execute(
        wallet.update()
        .where(wallet.c.tenant == tenant)
        .values(
            currency=currency,
            balance=balance,
            taken=WIDE.add(_dec(w["taken"]), take),
            updated_at=now,
        )
    )
    if take == 0:  # only what is due moved (the balance is empty): no money moved
        return Settlement(period, currency, due, paid, ZERO, balance)
    seq = conn.execute(
        select(func.count())
        .select_from(wallet_entry)
        .where(wallet_entry.c.tenant == tenant, wallet_entry.c.period == period)
    ).scalar_one()
    conn.execute(
        wallet_entry.insert().values(
            tenant=tenant,
            key=f"settle/{period}/{seq + 1}",
            kind="burn" if take >= 0 else "refund",
            currency=currency,
            amount=difference,
            taken=take,
            shortfall=_dec(WIDE.subtract(due, paid)),
            balance_after=balance,
            created_at=now,
            period=period,
        )
    )
    return Settlement(period, currency, due, paid, take, balance)


def settlements(conn: Connection, tenant: str) -> list[Settlement]:
    """Every period's settlement state for `tenant`, oldest first."""
    balance = get_balance(conn, tenant).balance
    rows = conn.execute(
        select(wallet_period)
        .where(wallet_period.c.tenant == tenant)
        .order_by(wallet_period.c.period)
    )
    return [Settlement(r.period, r.currency, _dec(r.due), _dec(r.paid), ZERO, balance)
            for r in rows]  # fmt: skip


def get_balance(conn: Connection, tenant: str) -> WalletBalance:
    row = conn.execute(select(wallet).where(wallet.c.tenant == tenant)).first()
    if row is None:
        return WalletBalance(tenant, None, ZERO, ZERO, ZERO)
    outstanding = ZERO
    for due, paid in conn.execute(
        select(wallet_period.c.due, wallet_period.c.paid).where(wallet_period.c.tenant == tenant)
    ):
        outstanding = _dec(WIDE.add(outstanding, WIDE.subtract(due, paid)))
    return WalletBalance(tenant, row.currency, row.balance, row.topped_up, row.taken, outstanding)


def _dec(value: object) -> Decimal:
    assert isinstance(value, Decimal)
    return Decimal(plain(value))
