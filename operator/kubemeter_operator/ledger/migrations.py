"""A small versioned migrator: ordered steps, a `schema_version` table, upgrade in place.

Each step owns its DDL (its own Table objects, frozen as they were at that version), so
later edits to `schema.py` never change what an old step did; a test checks that migrating
an empty database to the head matches `schema.metadata`. All pending steps run in one
transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: DDL is transactional, and an advisory
lock keeps two operators starting at once from migrating twice).

Add a step: append a function to STEPS. Never edit or reorder a released step.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Engine,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
)

from kubemeter_operator.errors import PermanentError
from kubemeter_operator.ledger import rollup
from kubemeter_operator.ledger.codec import parse_record
from kubemeter_operator.ledger.columns import ExactDecimal, UtcTimestamp
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, schema_version
from kubemeter_operator.usage.totals import Quantities

_ADVISORY_LOCK_KEY = 0x6B6D6C6564676572  # "kmledger"
_BACKFILL_CHUNK = 5000


def _v1_initial(conn: Connection) -> None:
    """Usage events and windows, checkpoints, terms, statements, wallets."""
    md = MetaData()
    Table(
        "usage_event",
        md,
        Column("event_id", String(200), primary_key=True),
        Column("tenant", String(253), nullable=False),
        Column("at", UtcTimestamp, nullable=False),
        Column("payload_hash", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("recorded_at", UtcTimestamp, nullable=False),
    )
    Table(
        "usage_window",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("source", String(200), primary_key=True),
        Column("series", String(1000), primary_key=True),
        Column("window_start", UtcTimestamp, primary_key=True),
        Column("window_end", UtcTimestamp, nullable=False),
        Column("payload_hash", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("recorded_at", UtcTimestamp, nullable=False),
    )
    Table(
        "checkpoint",
        md,
        Column("name", String(200), primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", UtcTimestamp, nullable=False),
    )
    Table(
        "tenant_terms",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("plan", Text, nullable=False),
        Column("discount_percent", ExactDecimal, nullable=False),
        Column("updated_at", UtcTimestamp, nullable=False),
    )
    Table(
        "statement",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("currency", String(3), nullable=False),
        Column("total", ExactDecimal, nullable=False),
        Column("body", Text, nullable=False),
        Column("body_hash", String(64), nullable=False),
        Column("finalized_at", UtcTimestamp, nullable=False),
    )
    Table(
        "statement_line",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("line_no", Integer, primary_key=True, autoincrement=False),
        Column("kind", String(16), nullable=False),
        Column("meter", String(63), nullable=True),
        Column("quantity", ExactDecimal, nullable=True),
        Column("amount", ExactDecimal, nullable=False),
        ForeignKeyConstraint(["tenant", "period"], ["statement.tenant", "statement.period"]),
    )
    Table(
        "wallet",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("currency", String(3), nullable=True),
        Column("balance", ExactDecimal, nullable=False),
        Column("topped_up", ExactDecimal, nullable=False),
        Column("taken", ExactDecimal, nullable=False),
        Column("updated_at", UtcTimestamp, nullable=False),
    )
    Table(
        "wallet_entry",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("kind", String(8), nullable=False),
        Column("currency", String(3), nullable=True),
        Column("amount", ExactDecimal, nullable=False),
        Column("taken", ExactDecimal, nullable=False),
        Column("shortfall", ExactDecimal, nullable=False),
        Column("balance_after", ExactDecimal, nullable=False),
        Column("created_at", UtcTimestamp, nullable=False),
        ForeignKeyConstraint(["tenant"], ["wallet.tenant"]),
    )
    md.create_all(conn)


def _v2_rollups(conn: Connection) -> None:
    """Daily usage rollups, backfilled from every usage row already in the ledger."""
    md = MetaData()
    table = Table(
        "usage_rollup",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("model", String(200), primary_key=True),
        Column("mig_profile", String(40), primary_key=True),
        Column("name", String(100), primary_key=True),
        *(Column(name, BigInteger, nullable=False) for name in QUANTITY_COLUMNS),
        Column("custom", ExactDecimal, nullable=False),
        Index("ix_usage_rollup_period", "period", "tenant"),
        Index("ix_usage_rollup_day", "day"),
    )
    md.create_all(conn)
    for source in ("usage_event", "usage_window"):
        src = Table(source, MetaData(), Column("tenant", String), Column("payload", Text))
        acc: dict[rollup.RollupKey, Quantities] = {}
        result = conn.execute(
            select(src.c.tenant, src.c.payload),
            execution_options={"yield_per": _BACKFILL_CHUNK},
        )
        for tenant, payload in result:
            rollup.add_record(acc, tenant, parse_record(payload))
            if len(acc) >= _BACKFILL_CHUNK:
                rollup.upsert(conn, acc, table)
                acc = {}
        rollup.upsert(conn, acc, table)


def _v3_event_index(conn: Connection) -> None:
    """Index usage events by (tenant, at) for per-tenant audit exports."""
    md = MetaData()
    table = Table("usage_event", md, Column("tenant", String), Column("at", UtcTimestamp))
    Index("ix_usage_event_tenant_at", table.c.tenant, table.c.at).create(conn)


STEPS: list[Callable[[Connection], None]] = [_v1_initial, _v2_rollups, _v3_event_index]
HEAD = len(STEPS)


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, "schema_version"):
        return 0
    return int(
        conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()
    )


def migrate(engine: Engine, target: int = HEAD) -> tuple[int, int]:
    """Bring the ledger to `target` (default: head). Returns (version before, version after)."""
    if not 0 <= target <= HEAD:
        raise ValueError(f"target version {target} is not between 0 and {HEAD}")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
        before = current_version(conn)
        if before > HEAD:
            raise PermanentError(
                f"ledger schema version {before} is newer than this kubemeter supports "
                f"({HEAD}); upgrade kubemeter"
            )
        if before == 0:
            schema_version.create(conn, checkfirst=True)
        for version in range(before + 1, target + 1):
            STEPS[version - 1](conn)
            conn.execute(
                schema_version.insert().values(version=version, applied_at=datetime.now(UTC))
            )
        return before, max(before, target)
