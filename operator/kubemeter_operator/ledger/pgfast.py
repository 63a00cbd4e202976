"""PostgreSQL hot path: fixed-shape statements over arrays (``unnest``), sent by psycopg in
binary format and prepared once per connection.

SQLAlchemy's multi-row VALUES would build (and psycopg parse) a new statement for every
batch size; text-format array parameters are escaped in Python, character by character.
Both cost more than the database does. These statements run on the DBAPI connection of the
caller's SQLAlchemy transaction, so they commit or roll back with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
