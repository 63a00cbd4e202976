"""Ledger URL -> SQLAlchemy Engine, with the transaction discipline the ledger relies on.

- SQLite (the embedded default): a file path or ``sqlite:///path``. WAL journal with
  ``synchronous=FULL`` (every commit is fsynced before it returns: an acknowledged event or
  top-up survives a power loss, not only a process crash), foreign
  keys on, ``busy_timeout``; pysqlite's own transaction handling is switched off and every
  transaction begins with ``BEGIN IMMEDIATE`` (the write lock up front, so read-modify-write
  sequences such as wallet burns serialise), except connections marked read-only
  (``execution_options(ledger_readonly=True)``), which use a plain deferred ``BEGIN``.
  SQLite has no decimal type, so money is stored as text and the SQL function
  ``dec_add(a, b)`` adds two such decimals exactly (used by rollup upserts).
- PostgreSQL: ``postgresql+psycopg://...`` (``postgresql://`` and ``postgres://`` are taken
  to mean psycopg 3 too). Read committed; wallets lock their row with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import os
import sqlite3
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger.columns import WIDE, plain

DEFAULT_URL = "sqlite:///kubemeter-ledger.db"
BUSY_TIMEOUT_MS = 60_000
READONLY = "ledger_readonly"


DB_ENV = "KUBEMETER_DB"


def resolve_url(given: str | None) -> str:
    """--db if given, else $KUBEMETER_DB, else the SQLite file kubemeter-ledger.db here."""
    return given or os.environ.get(DB_ENV) or DEFAULT_URL


def normalize_url(url: str) -> URL:
    """Accept a plain file path (SQLite) or a SQLAlchemy URL; pick psycopg for PostgreSQL."""
    text = url.strip()
    if not text:
        raise InputError("db", "empty database URL")
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        parsed = make_url(text)
    except ArgumentError as exc:
        raise InputError("db", f"not a database URL: {url!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend == "postgres" or parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise InputError("db", f"unsupported database {backend!r} (use sqlite or postgresql)")
    return parsed


def _dec_add(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return plain(WIDE.add(Decimal(a), Decimal(b)))


def make_engine(url: str) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=60,
    )


def _sqlite_engine(parsed: URL) -> Engine:
    engine = create_engine(
        parsed,
        pool_size=10,
        max_overflow=20,
        pool_timeout=60,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take over transaction control from pysqlite (it would BEGIN lazily, deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        finally:
            cur.close()
        dbapi_conn.create_function("dec_add", 2, _dec_add, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
