"""A small versioned migrator: ordered steps, a `schema_version` table, upgrade in place.

Each step owns its DDL (its own Table objects, frozen as they were at that version), so
later edits to `schema.py` never change what an old step did; a test checks that migrating
an empty database to the head matches `schema.metadata`. All pending steps run in one
transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: DDL is transactional, and an advisory
lock keeps two operators starting at once from migrating twice).

Add a step: append a function to STEPS. Never edit or reorder a released step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kubemeter_operator.errors import PermanentError
from kubemeter_operator.ledger.codec import parse_record
from kubemeter_operator.ledger.columns import ExactDecimal, UtcTimestamp
from kubemeter_operator.ledger.schema import QUANTITY_COLUMNS, schema_version
from kubemeter_operator.usage.days import split_by_day
from kubemeter_operator.usage.totals import Quantities, UsageKey, key_and_quantities

_ADVISORY_LOCK_KEY = 0x6B6D6C6564676572  # "kmledger"
_BACKFILL_CHUNK = 5000
_PERIOD_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


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
        acc: dict[_V2Key, Quantities] = {}
        result = conn.execute(
            select(src.c.tenant, src.c.payload),
            execution_options={"yield_per": _BACKFILL_CHUNK},
        )
        for tenant, payload in result:
            for period, day, part in split_by_day(parse_record(payload)):
                key, qty = key_and_quantities(part)
                have = acc.setdefault((tenant, str(period), day, key), Quantities())
                have.add(qty)
            if len(acc) >= _BACKFILL_CHUNK:
                _v2_upsert(conn, table, acc)
                acc = {}
        _v2_upsert(conn, table, acc)


_V2Key = tuple[str, str, date, UsageKey]


def _v2_upsert(conn: Connection, table: Table, acc: dict[_V2Key, Quantities]) -> None:
    """Add summed quantities to v2 rollup rows (frozen: the v2 table's columns)."""
    if not acc:
        return
    rows = []
    for (tenant, period, day, key), qty in sorted(acc.items()):
        row: dict[str, object] = {"tenant": tenant, "period": period, "day": day,
                                  "kind": key.kind, "model": key.model,
                                  "mig_profile": key.mig_profile, "name": key.name,
                                  "custom": qty.custom}  # fmt: skip
        row.update({c: getattr(qty, c) for c in QUANTITY_COLUMNS})
        rows.append(row)
    ins: Any = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
    set_: dict[str, Any] = {c: table.c[c] + ins.excluded[c] for c in QUANTITY_COLUMNS}
    set_["custom"] = (
        table.c.custom + ins.excluded.custom
        if conn.dialect.name == "postgresql"
        else func.dec_add(table.c.custom, ins.excluded.custom)
    )
    keys = ["tenant", "period", "day", "kind", "model", "mig_profile", "name"]
    conn.execute(ins.on_conflict_do_update(index_elements=keys, set_=set_), rows)


def _v3_event_index(conn: Connection) -> None:
    """Index usage events by (tenant, at) for per-tenant audit exports."""
    md = MetaData()
    table = Table("usage_event", md, Column("tenant", String), Column("at", UtcTimestamp))
    Index("ix_usage_event_tenant_at", table.c.tenant, table.c.at).create(conn)


def _v4_billing_over_time(conn: Connection) -> None:
    """Billing over time: rollups know the period that bills them (`booked`), tenants their
    latest finalised period, statements whether PeriodClosed was announced, and wallets what
    each period owes and has paid.

    usage_rollup is rebuilt (its primary key gains `booked`; existing rows are booked in their
    own period). billing_state is seeded from the finalised statements (and every tenant with
    terms). Burns written by earlier versions (keys `burn/<tenant>/<period>/<total>`) become
    per-period payments: paid = what they took, due = the highest total they paid toward.
    """
    md = MetaData()
    Table("wallet", md, Column("tenant", String(253), primary_key=True))  # the FK target
    rollup_v4 = Table(
        "usage_rollup_v4",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("booked", String(7), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("model", String(200), primary_key=True),
        Column("mig_profile", String(40), primary_key=True),
        Column("name", String(100), primary_key=True),
        *(Column(name, BigInteger, nullable=False) for name in QUANTITY_COLUMNS),
        Column("custom", ExactDecimal, nullable=False),
    )
    state_v4 = Table(
        "billing_state",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("closed_through", String(7), nullable=False),
        Column("updated_at", UtcTimestamp, nullable=False),
    )
    wallet_period_v4 = Table(
        "wallet_period",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("currency", String(3), nullable=False),
        Column("due", ExactDecimal, nullable=False),
        Column("paid", ExactDecimal, nullable=False),
        Column("updated_at", UtcTimestamp, nullable=False),
        ForeignKeyConstraint(["tenant"], ["wallet.tenant"]),
    )
    md.create_all(conn, tables=[rollup_v4, state_v4, wallet_period_v4])  # not wallet
    columns = ", ".join(("tenant", "period", "day", "kind", "model", "mig_profile", "name",
                         *QUANTITY_COLUMNS, "custom"))  # fmt: skip
    conn.execute(
        text(
            f"INSERT INTO usage_rollup_v4 (booked, {columns}) "
            f"SELECT period, {columns} FROM usage_rollup"
        )
    )
    conn.execute(text("DROP TABLE usage_rollup"))
    conn.execute(text("ALTER TABLE usage_rollup_v4 RENAME TO usage_rollup"))
    if conn.dialect.name == "postgresql":  # keep the constraint's conventional name
        conn.execute(
            text(
                "ALTER TABLE usage_rollup RENAME CONSTRAINT usage_rollup_v4_pkey "
                "TO usage_rollup_pkey"
            )
        )
    renamed = Table("usage_rollup", MetaData(), Column("booked", String), Column("tenant", String),
                    Column("day", Date))  # fmt: skip
    Index("ix_usage_rollup_booked", renamed.c.booked, renamed.c.tenant).create(conn)
    Index("ix_usage_rollup_day", renamed.c.day).create(conn)
    now = datetime.now(UTC)
    stmt_t = Table("statement", MetaData(), Column("tenant", String), Column("period", String))
    terms_t = Table("tenant_terms", MetaData(), Column("tenant", String))
    closed = dict(
        conn.execute(
            select(stmt_t.c.tenant, func.max(stmt_t.c.period)).group_by(stmt_t.c.tenant)
        ).all()
    )
    for (tenant,) in conn.execute(select(terms_t.c.tenant).distinct()).all():
        closed.setdefault(tenant, "")
    state_t = Table(
        "billing_state",
        MetaData(),
        Column("tenant", String),
        Column("closed_through", String),
        Column("updated_at", UtcTimestamp),
    )
    if closed:
        conn.execute(
            state_t.insert(),
            [{"tenant": t, "closed_through": c, "updated_at": now} for t, c in closed.items()],
        )
    conn.execute(text("ALTER TABLE statement ADD COLUMN announced_at " + _ts_type(conn)))
    conn.execute(text("UPDATE statement SET announced_at = finalized_at"))
    conn.execute(text("ALTER TABLE wallet_entry ADD COLUMN period VARCHAR(7)"))
    _v4_wallet_periods(conn, now)


def _ts_type(conn: Connection) -> str:
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "VARCHAR(32)"


def _v4_wallet_periods(conn: Connection, now: datetime) -> None:
    entry = Table("wallet_entry", MetaData(), Column("tenant", String), Column("key", String),
                  Column("kind", String), Column("taken", ExactDecimal),
                  Column("period", String))  # fmt: skip
    wallet = Table("wallet", MetaData(), Column("tenant", String), Column("currency", String))
    period_t = Table("wallet_period", MetaData(), Column("tenant", String),
                     Column("period", String), Column("currency", String),
                     Column("due", ExactDecimal), Column("paid", ExactDecimal),
                     Column("updated_at", UtcTimestamp))  # fmt: skip
    currencies = dict(conn.execute(select(wallet.c.tenant, wallet.c.currency)).all())
    sums: dict[tuple[str, str], list[Decimal]] = {}
    rows = conn.execute(
        select(entry.c.tenant, entry.c.key, entry.c.taken).where(entry.c.kind == "burn")
    ).all()
    for tenant, key, taken in rows:
        parts = str(key).split("/")
        if len(parts) != 4 or parts[0] != "burn" or not _PERIOD_RE.match(parts[2]):
            continue
        try:
            total = Decimal(parts[3])
        except ArithmeticError:
            continue
        acc = sums.setdefault((tenant, parts[2]), [Decimal(0), Decimal(0)])
        acc[0] = max(acc[0], total)
        acc[1] += taken
        conn.execute(
            entry.update()
            .where(entry.c.tenant == tenant, entry.c.key == key)
            .values(period=parts[2])
        )
    for (tenant, period), (due, paid) in sorted(sums.items()):
        currency = currencies.get(tenant)
        if currency is None:
            continue
        conn.execute(
            period_t.insert().values(
                tenant=tenant,
                period=period,
                currency=currency,
                due=max(due, paid),
                paid=paid,
                updated_at=now,
            )
        )


def _v5_trust(conn: Connection) -> None:
    """Event ids unique per tenant; quantities CHECKed; a quarantine for bad deltas.

    usage_event and usage_rollup are rebuilt (new primary key; CHECK constraints, which
    SQLite cannot add to an existing table): rows are copied as they are.
    """
    md = MetaData()
    Table(
        "usage_event_v5",
        md,
        Column("event_id", String(200), primary_key=True),
        Column("tenant", String(253), primary_key=True),
        Column("at", UtcTimestamp, nullable=False),
        Column("payload_hash", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("recorded_at", UtcTimestamp, nullable=False),
    )
    checks = [CheckConstraint(f"{c} >= 0", name=f"ck_{c}_nonnegative") for c in QUANTITY_COLUMNS]
    if conn.dialect.name == "sqlite":
        checks += [CheckConstraint(f"typeof({c}) = 'integer'", name=f"ck_{c}_integer")
                   for c in QUANTITY_COLUMNS]  # fmt: skip
    Table(
        "usage_rollup_v5",
        md,
        Column("tenant", String(253), primary_key=True),
        Column("booked", String(7), primary_key=True),
        Column("period", String(7), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("model", String(200), primary_key=True),
        Column("mig_profile", String(40), primary_key=True),
        Column("name", String(100), primary_key=True),
        *(Column(name, BigInteger, nullable=False) for name in QUANTITY_COLUMNS),
        Column("custom", ExactDecimal, nullable=False),
        *checks,
    )
    quarantine = Table(
        "quarantine",
        md,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(253), nullable=False),
        Column("source", String(200), nullable=False),
        Column("series", String(1000), nullable=False),
        Column("window_start", UtcTimestamp, nullable=False),
        Column("window_end", UtcTimestamp, nullable=False),
        Column("reason", Text, nullable=False),
        Column("payload", Text, nullable=False),
        Column("state", String(10), nullable=False),
        Column("created_at", UtcTimestamp, nullable=False),
        Column("decided_at", UtcTimestamp, nullable=True),
        CheckConstraint("state IN ('held', 'released', 'discarded')", name="ck_quarantine_state"),
    )
    md.create_all(conn)
    _copy(conn, "usage_event", "usage_event_v5",
          ("event_id", "tenant", "at", "payload_hash", "payload", "recorded_at"))  # fmt: skip
    _copy(conn, "usage_rollup", "usage_rollup_v5",
          ("tenant", "booked", "period", "day", "kind", "model", "mig_profile", "name",
           *QUANTITY_COLUMNS, "custom"))  # fmt: skip
    for old, new in (("usage_event", "usage_event_v5"), ("usage_rollup", "usage_rollup_v5")):
        conn.execute(text(f"DROP TABLE {old}"))
        conn.execute(text(f"ALTER TABLE {new} RENAME TO {old}"))
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE {old} RENAME CONSTRAINT {new}_pkey TO {old}_pkey"))
    ev = Table("usage_event", MetaData(), Column("tenant", String), Column("at", UtcTimestamp))
    Index("ix_usage_event_tenant_at", ev.c.tenant, ev.c.at).create(conn)
    ro = Table("usage_rollup", MetaData(), Column("booked", String), Column("tenant", String),
               Column("day", Date))  # fmt: skip
    Index("ix_usage_rollup_booked", ro.c.booked, ro.c.tenant).create(conn)
    Index("ix_usage_rollup_day", ro.c.day).create(conn)
    Index("ix_quarantine_state", quarantine.c.state, quarantine.c.tenant).create(conn)


def _copy(conn: Connection, source: str, target: str, columns: tuple[str, ...]) -> None:
    names = ", ".join(columns)
    conn.execute(text(f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}"))


def _v6_budgets(conn: Connection) -> None:
    """The notification outbox and enforcement's write-ahead log (new tables only)."""
    md = MetaData()
    Table(
        "notification",
        md,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(253), nullable=False),
        Column("key", String(600), nullable=False),
        Column("period", String(7), nullable=True),
        Column("type", String(64), nullable=False),
        Column("severity", String(8), nullable=False),
        Column("message", Text, nullable=False),
        Column("data", Text, nullable=False),
        Column("created_at", UtcTimestamp, nullable=False),
        Column("event_state", String(8), nullable=False),
        Column("webhook_state", String(10), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", UtcTimestamp, nullable=True),
        Column("last_attempt_at", UtcTimestamp, nullable=True),
        Column("last_error", Text, nullable=True),
        Column("delivered_at", UtcTimestamp, nullable=True),
        CheckConstraint("event_state IN ('pending', 'posted')", name="ck_notification_event"),
        CheckConstraint(
            "webhook_state IN ('none', 'pending', 'delivered', 'dead')",
            name="ck_notification_webhook",
        ),
        CheckConstraint("attempts >= 0", name="ck_notification_attempts"),
        Index("ux_notification_key", "tenant", "key", unique=True),
        Index("ix_notification_webhook", "webhook_state", "next_attempt_at"),
        Index("ix_notification_event", "event_state"),
    )
    Table(
        "suspension",
        md,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(253), nullable=False),
        Column("period", String(7), nullable=False),
        Column("trigger", String(20), nullable=False),
        Column("limit", ExactDecimal, nullable=True),
        Column("reason", Text, nullable=False),
        Column("state", String(10), nullable=False),
        Column("started_at", UtcTimestamp, nullable=False),
        Column("stopped_at", UtcTimestamp, nullable=True),
        Column("overshoot", ExactDecimal, nullable=True),
        Column("restored_at", UtcTimestamp, nullable=True),
        CheckConstraint(
            "state IN ('suspending', 'suspended', 'restoring', 'restored')",
            name="ck_suspension_state",
        ),
        Index(
            "ux_suspension_active",
            "tenant",
            unique=True,
            sqlite_where=text("state != 'restored'"),
            postgresql_where=text("state != 'restored'"),
        ),
    )
    Table(
        "suspended_workload",
        md,
        Column("suspension_id", String(64), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("namespace", String(63), primary_key=True),
        Column("name", String(253), primary_key=True),
        Column("uid", String(64), nullable=False),
        Column("replicas", BigInteger, nullable=True),
        Column("suspend", Boolean, nullable=True),
        Column("state", String(10), nullable=False),
        Column("autoscaler", Text, nullable=True),
        Column("keda_object", String(253), nullable=True),
        Column("recorded_at", UtcTimestamp, nullable=False),
        Column("stopped_at", UtcTimestamp, nullable=True),
        Column("restored_at", UtcTimestamp, nullable=True),
        Column("note", Text, nullable=True),
        CheckConstraint(
            "state IN ('stopping', 'stopped', 'left', 'deleted', 'restored', 'gone')",
            name="ck_suspended_workload_state",
        ),
        CheckConstraint("replicas IS NULL OR replicas >= 0", name="ck_suspended_workload_replicas"),
        ForeignKeyConstraint(["suspension_id"], ["suspension.id"]),
    )
    md.create_all(conn)


STEPS: list[Callable[[Connection], None]] = [
    _v1_initial,
    _v2_rollups,
    _v3_event_index,
    _v4_billing_over_time,
    _v5_trust,
    _v6_budgets,
]
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
