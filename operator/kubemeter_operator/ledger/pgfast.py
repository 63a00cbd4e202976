"""PostgreSQL hot path: fixed-shape statements over arrays (``unnest``), sent by psycopg in
binary format and prepared once per connection.

SQLAlchemy's multi-row VALUES would build (and psycopg parse) a new statement for every
batch size; text-format array parameters are escaped in Python, character by character.
Both cost more than the database does. These statements run on the DBAPI connection of the
caller's SQLAlchemy transaction, so they commit or roll back with it (`execute_alone`: a
statement that is the whole transaction, committed by itself without BEGIN/COMMIT trips).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection


def execute(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run `sql` (psycopg ``%(name)s`` placeholders) (%(name)b: binary); rows if it returns any."""
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cur:
        cur.execute(sql, params, prepare=True)
        if cur.description is None:
            return []
        rows: list[tuple[Any, ...]] = cur.fetchall()
        return rows


def execute_alone(
    conn: Connection, sql: str, params: Mapping[str, Any]
) -> list[tuple[Any, ...]] | None:
    """Run `sql` like `execute`, but as a transaction of its own, when the caller's
    transaction has not sent anything to the server yet (else None: use `execute`).

    A single statement is atomic: it commits (durably) when it returns and rolls back
    whole when it fails. Running it in autocommit mode saves the BEGIN and COMMIT round
    trips; the caller's COMMIT (or ROLLBACK) then finds nothing to do. Only for a
    statement that is the whole of the caller's transaction, and that fails (raises)
    rather than returns whenever the transaction must not commit."""
    driver: Any = conn.connection.driver_connection
    if driver.info.transaction_status != TransactionStatus.IDLE:
        return None
    was = driver.autocommit
    driver.autocommit = True
    try:
        with driver.cursor() as cur:
            cur.execute(sql, params, prepare=True)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        if not was and not driver.closed:
            driver.autocommit = False
