"""The ledger's tables at the head schema version (SQLAlchemy Core).

`migrations.py` creates and upgrades these step by step; a test checks that a database
migrated from scratch matches this metadata.

- usage_event: one row per (tenant, event id) (events API, `kubemeter ledger record`). The
  id is the tenant's idempotency key; payload_hash tells a replay from a conflicting reuse.
- usage_window: one row per (tenant, source, series, window_start) from the metering loop.
- usage_rollup: summed base quantities per (tenant, booked period, usage period, UTC day,
  usage key), maintained in the same transaction as the usage rows; totals and statements
  read only these. `period` is the period the usage belongs to (its timestamp); `booked` is
  the period whose statement bills it: the same, unless the usage period was already
  finalised when the usage was recorded (late usage: booked into the next open period).
- billing_state: per tenant, the latest finalised period (`closed_through`). Usage writers
  read it (PostgreSQL: FOR SHARE) to decide `booked`; the period close updates it (FOR
  UPDATE) in the transaction that stores the statement, so no usage can slip in between.
- checkpoint: small JSON values for the metering loop (written with its windows).
- tenant_terms: the price plan and discount a tenant had for a period, so an invoice can be
  rated from the ledger alone.
- statement / statement_line: finalised (immutable) period statements and their lines;
  `announced_at` is set once the PeriodClosed Event was posted.
- wallet / wallet_entry / wallet_period: prepaid balances, their entries (top-ups, burns
  and refunds), and per period what is due and what the wallet has paid of it.
- quarantine: counter deltas that broke a bound (more GPU time than wall time, tokens
  faster than the configured rate): kept, never billed until an admin releases them.
- notification: the outbox of budget notices (thresholds, exceeded, wallet low/empty,
  suspended, restored, fought). One row per (tenant, key): the key names what is announced
  once (`2026-11/threshold/80`), so recording it again is a no-op and a restart or failover
  never announces it twice. The row carries its Kubernetes Event (posted, at least once) and
  its webhook delivery (attempts, backoff, delivered or dead-lettered).
- suspension / suspended_workload: budget enforcement's write-ahead log. A suspension per
  enforcement (at most one not restored per tenant); each workload's original replicas or
  suspend state is written before kubemeter changes it, and restored from here.

Quantities are 64-bit integers with CHECK constraints (non-negative; on SQLite also of
integer type, so an overflowing sum fails instead of silently becoming a REAL).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from kubemeter_operator.ledger.columns import ExactDecimal, UtcTimestamp

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcTimestamp, nullable=False),
)

usage_event = Table(
    "usage_event",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("tenant", String(253), primary_key=True),
    Column("at", UtcTimestamp, nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("recorded_at", UtcTimestamp, nullable=False),
    Index("ix_usage_event_tenant_at", "tenant", "at"),
)

usage_window = Table(
    "usage_window",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("series", String(1000), primary_key=True),
    Column("window_start", UtcTimestamp, primary_key=True),
    Column("window_end", UtcTimestamp, nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("recorded_at", UtcTimestamp, nullable=False),
)

QUANTITY_COLUMNS = (
    "allocated_ms",
    "active_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "steps",
    "requests",
)
"""Integer quantity columns of usage_rollup (plus the decimal `custom`)."""


def quantity_checks(columns: tuple[str, ...]) -> list[CheckConstraint]:
    """Every quantity is a non-negative 64-bit integer; SQLite (whose integers turn into
    REAL on overflow) also checks the stored type."""
    checks = [CheckConstraint(f"{c} >= 0", name=f"ck_{c}_nonnegative") for c in columns]
    checks += [
        CheckConstraint(f"typeof({c}) = 'integer'", name=f"ck_{c}_integer").ddl_if(dialect="sqlite")
        for c in columns
    ]
    return checks


usage_rollup = Table(
    "usage_rollup",
    metadata,
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
    *quantity_checks(QUANTITY_COLUMNS),
    Index("ix_usage_rollup_booked", "booked", "tenant"),
    Index("ix_usage_rollup_day", "day"),
)

billing_state = Table(
    "billing_state",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("closed_through", String(7), nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
)

checkpoint = Table(
    "checkpoint",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
)

tenant_terms = Table(
    "tenant_terms",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("plan", Text, nullable=False),
    Column("discount_percent", ExactDecimal, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
)

statement = Table(
    "statement",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("total", ExactDecimal, nullable=False),
    Column("body", Text, nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("finalized_at", UtcTimestamp, nullable=False),
    Column("announced_at", UtcTimestamp, nullable=True),
)

statement_line = Table(
    "statement_line",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("line_no", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("meter", String(63), nullable=True),
    Column("quantity", ExactDecimal, nullable=True),
    Column("amount", ExactDecimal, nullable=False),
    ForeignKeyConstraint(["tenant", "period"], ["statement.tenant", "statement.period"]),
)

wallet = Table(
    "wallet",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("currency", String(3), nullable=True),
    Column("balance", ExactDecimal, nullable=False),
    Column("topped_up", ExactDecimal, nullable=False),
    Column("taken", ExactDecimal, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
)

wallet_entry = Table(
    "wallet_entry",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("currency", String(3), nullable=True),
    Column("amount", ExactDecimal, nullable=False),
    Column("taken", ExactDecimal, nullable=False),
    Column("shortfall", ExactDecimal, nullable=False),
    Column("balance_after", ExactDecimal, nullable=False),
    Column("created_at", UtcTimestamp, nullable=False),
    Column("period", String(7), nullable=True),
    ForeignKeyConstraint(["tenant"], ["wallet.tenant"]),
)

quarantine = Table(
    "quarantine",
    metadata,
    # a digest of (tenant, source, series, window start): the same delta is held once
    Column("id", String(64), primary_key=True),
    Column("tenant", String(253), nullable=False),
    Column("source", String(200), nullable=False),
    Column("series", String(1000), nullable=False),
    Column("window_start", UtcTimestamp, nullable=False),
    Column("window_end", UtcTimestamp, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),  # the usage record held back (canonical JSON)
    Column("state", String(10), nullable=False),  # held, released or discarded
    Column("created_at", UtcTimestamp, nullable=False),
    Column("decided_at", UtcTimestamp, nullable=True),
    CheckConstraint("state IN ('held', 'released', 'discarded')", name="ck_quarantine_state"),
    Index("ix_quarantine_state", "state", "tenant"),
)

wallet_period = Table(
    "wallet_period",
    metadata,
    Column("tenant", String(253), primary_key=True),
    Column("period", String(7), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("due", ExactDecimal, nullable=False),
    Column("paid", ExactDecimal, nullable=False),
    Column("updated_at", UtcTimestamp, nullable=False),
    ForeignKeyConstraint(["tenant"], ["wallet.tenant"]),
)

notification = Table(
    "notification",
    metadata,
    Column("id", String(64), primary_key=True),  # the stable event id (CloudEvents `id`)
    Column("tenant", String(253), nullable=False),
    Column("key", String(600), nullable=False),  # what is announced once, e.g. 2026-11/threshold/80
    Column("period", String(7), nullable=True),
    Column("type", String(64), nullable=False),  # the Event reason, e.g. BudgetThresholdCrossed
    Column("severity", String(8), nullable=False),  # Normal or Warning
    Column("message", Text, nullable=False),
    Column("data", Text, nullable=False),  # the webhook's `data` (canonical JSON)
    Column("created_at", UtcTimestamp, nullable=False),
    Column("event_state", String(8), nullable=False),  # pending, posted
    Column("webhook_state", String(10), nullable=False),  # none, pending, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcTimestamp, nullable=True),
    Column("last_attempt_at", UtcTimestamp, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UtcTimestamp, nullable=True),
    CheckConstraint("event_state IN ('pending', 'posted')", name="ck_notification_event"),
    CheckConstraint(
        "webhook_state IN ('none', 'pending', 'delivered', 'dead')", name="ck_notification_webhook"
    ),
    CheckConstraint("attempts >= 0", name="ck_notification_attempts"),
    Index("ux_notification_key", "tenant", "key", unique=True),
    Index("ix_notification_webhook", "webhook_state", "next_attempt_at"),
    Index("ix_notification_event", "event_state"),
)

suspension = Table(
    "suspension",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(253), nullable=False),
    Column("period", String(7), nullable=False),  # the period whose budget stopped it
    Column("trigger", String(20), nullable=False),  # walletEmpty, budgetExceeded, budgetForecast
    Column("limit", ExactDecimal, nullable=True),  # the budget limit then
    Column("reason", Text, nullable=False),
    Column("state", String(10), nullable=False),  # suspending, suspended, restoring, restored
    Column("started_at", UtcTimestamp, nullable=False),
    Column("stopped_at", UtcTimestamp, nullable=True),  # the last GPU workload reached 0
    Column("overshoot", ExactDecimal, nullable=True),
    Column("restored_at", UtcTimestamp, nullable=True),
    CheckConstraint(
        "state IN ('suspending', 'suspended', 'restoring', 'restored')", name="ck_suspension_state"
    ),
    Index(
        "ux_suspension_active",
        "tenant",
        unique=True,
        sqlite_where=text("state != 'restored'"),
        postgresql_where=text("state != 'restored'"),
    ),
)

suspended_workload = Table(
    "suspended_workload",
    metadata,
    Column("suspension_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),  # Deployment, StatefulSet, Job, CronJob, Pod
    Column("namespace", String(63), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("uid", String(64), nullable=False),
    Column("replicas", BigInteger, nullable=True),  # the original spec.replicas
    Column("suspend", Boolean, nullable=True),  # the original spec.suspend
    Column("state", String(10), nullable=False),  # stopping, stopped, left, deleted, restored, gone
    Column("autoscaler", Text, nullable=True),  # HPA / KEDA note
    Column("keda_object", String(253), nullable=True),  # the ScaledObject kubemeter paused
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
