"""The ledger: an auditable, idempotent store of usage, terms, statements and wallets.

    ledger = Ledger.open("sqlite:///kubemeter-ledger.db")   # or postgresql+psycopg://...
    ledger.record_events("acme", records)                   # idempotent by event id
    ledger.period_totals("acme", Period.parse("2026-11"))   # from daily rollups
    ledger.close()

Every public method is one transaction. Library errors surface as kubemeter errors:
TransientError (database down or busy: retry), ConflictError (a key reused with a
different payload), InputError (bad input; nothing written), PermanentError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.ledger import (
    enforcement,
    events,
    migrations,
    outbox,
    quarantine,
    queries,
    statements,
    usage,
    wallets,
)
from kubemeter_operator.ledger.dberrors import wrapped
from kubemeter_operator.ledger.enforcement import (
    SuspensionRow,
    WorkloadKey,
    WorkloadRecord,
    WorkloadRow,
)
from kubemeter_operator.ledger.engine import DEFAULT_URL, READONLY, make_engine
from kubemeter_operator.ledger.outbox import DeliverySummary, Notice, OutboxRow
from kubemeter_operator.ledger.quarantine import QuarantineEntry, QuarantineRow
from kubemeter_operator.ledger.statements import (
    Finalised,
    StatementLineRecord,
    StatementRecord,
    Terms,
)
from kubemeter_operator.ledger.usage import MeteringCommit, RecordResult, UsageWindow
from kubemeter_operator.ledger.wallets import Settlement, WalletBalance
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import UsageTotals

__all__ = [
    "DEFAULT_URL",
    "DeliverySummary",
    "Finalised",
    "Ledger",
    "LedgerTx",
    "MeteringCommit",
    "Notice",
    "OutboxRow",
    "QuarantineEntry",
    "QuarantineRow",
    "RecordResult",
    "Settlement",
    "StatementLineRecord",
    "StatementRecord",
    "SuspensionRow",
    "Terms",
    "UsageWindow",
    "WalletBalance",
    "WorkloadKey",
    "WorkloadRecord",
    "WorkloadRow",
]

T = TypeVar("T")


class LedgerTx:
    """The ledger's store operations inside one open transaction (`Ledger.transaction`):
    what the billing layer needs to read, rate and write a period close atomically."""

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now

    def lock_billing_state(self, tenant: str) -> Period | None:
        return statements.lock_billing_state(self.conn, tenant)

    def set_closed_through(self, tenant: str, period: Period) -> None:
        statements.set_closed_through(self.conn, tenant, period, self.now)

    def get_terms(self, tenant: str, period: Period) -> Terms | None:
        return statements.get_terms(self.conn, tenant, period)

    def period_totals(self, tenant: str, period: Period) -> UsageTotals:
        return queries.period_totals(self.conn, tenant, period)

    def late_totals(self, tenant: str, period: Period) -> dict[Period, UsageTotals]:
        return queries.late_totals(self.conn, tenant, period)

    def booked_before(self, tenant: str, period: Period, before: Period) -> UsageTotals:
        return queries.booked_before(self.conn, tenant, period, before)

    def get_statement(self, tenant: str, period: Period) -> str | None:
        return statements.get(self.conn, tenant, period)

    def finalize_statement(self, tenant: str, period: Period, record: StatementRecord) -> bool:
        return statements.finalize(self.conn, tenant, period, record, self.now)

    def wallet(self, tenant: str) -> WalletBalance:
        return wallets.get_balance(self.conn, tenant)

    def settle(
        self, tenant: str, period: Period, due: Decimal, currency: str, *, final: bool = False
    ) -> Settlement:
        return wallets.settle(self.conn, tenant, str(period), due, currency, self.now, final=final)

    def record_notices(self, notices: Sequence[Notice]) -> list[Notice]:
        """Record notices in this transaction (see `Ledger.record_notices`)."""
        return outbox.record(self.conn, notices, self.now)


class Ledger:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str = DEFAULT_URL,
        *,
        migrate: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> Ledger:
        """Connect, creating the ledger or upgrading its schema in place to the head.
        `clock` stamps what is written (recorded, finalised, updated); default: now."""
        engine = make_engine(url)
        try:
            if migrate:
                with wrapped("migrate"):
                    migrations.migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def schema_version(self) -> int:
        return self._read("schema version", migrations.current_version)

    @contextmanager
    def transaction(self, what: str) -> Iterator[LedgerTx]:
        """One write transaction (SQLite: BEGIN IMMEDIATE) for a unit of work made of store
        operations; it commits when the block ends and rolls back whole if it raises."""
        with self._write_tx(what) as conn:
            yield LedgerTx(conn, self._clock())

    @contextmanager
    def _write_tx(self, what: str) -> Iterator[Connection]:
        with wrapped(what), self.engine.begin() as conn:
            yield conn

    def _read(self, what: str, fn: Callable[[Connection], T]) -> T:
        with (
            wrapped(what),
            self.engine.connect().execution_options(**{READONLY: True}) as conn,
            conn.begin(),
        ):
            return fn(conn)

    # -- usage ---------------------------------------------------------------------------

    def record_events(self, tenant: str, records: Sequence[UsageRecord]) -> RecordResult:
        """Record usage events, idempotent by event id (all of the batch or nothing)."""
        with self._write_tx("record events") as conn:
            return events.record_events(conn, tenant, records, self._clock())

    def record_windows(
        self,
        windows: Sequence[UsageWindow],
        *,
        checkpoints: Mapping[str, Mapping[str, Any]] | None = None,
        expect_checkpoints: Mapping[str, Mapping[str, Any] | None] | None = None,
        quarantine: Sequence[QuarantineEntry] = (),
    ) -> RecordResult:
        """Record metering windows (and checkpoints) in one transaction, idempotently.

        `expect_checkpoints`: the checkpoint values the caller computed from (None: none
        yet); if one has moved meanwhile the call is a ConflictError and writes nothing.
        `quarantine`: deltas held back (never billed) in the same transaction."""
        with self._write_tx("record windows") as conn:
            return usage.record_windows(
                conn, windows, checkpoints, self._clock(), expect_checkpoints, quarantine
            )

    def record_metering(self, commit: MeteringCommit) -> RecordResult:
        """Commit one metering window: usage, quarantine and checkpoint in one transaction,
        if the checkpoint still holds `commit.expect` (else a ConflictError, nothing written)."""
        with self._write_tx("record metering window") as conn:
            return usage.record_windows(
                conn, commit.windows, {commit.name: commit.checkpoint}, self._clock(),
                {commit.name: commit.expect}, commit.quarantine,
            )  # fmt: skip

    def set_checkpoint(self, name: str, value: Mapping[str, Any]) -> None:
        with self._write_tx("set checkpoint") as conn:
            usage.set_checkpoints(conn, {name: value}, self._clock())

    def get_checkpoint(self, name: str) -> dict[str, Any] | None:
        return self._read("get checkpoint", lambda c: usage.get_checkpoint(c, name))

    # -- quarantine ----------------------------------------------------------------------

    def quarantined(self, state: str | None = quarantine.HELD) -> list[QuarantineRow]:
        """Quarantined usage in `state` (held, released, discarded; None: all), oldest first."""
        return self._read("quarantine", lambda c: quarantine.rows(c, state))

    def quarantined_entry(self, ref: str) -> QuarantineRow:
        """One quarantined entry by id or a unique prefix of at least 8 hex digits."""
        return self._read("quarantine", lambda c: quarantine.find(c, ref))

    def release_quarantined(self, ref: str) -> tuple[QuarantineRow, bool]:
        """Release held usage: it is recorded as the usage window it would have been (same
        key), booked like any usage (a finalised period's part as late usage), in the
        transaction that marks it released. Returns the entry and whether it changed now
        (False: already released). A discarded entry is an InputError naming its id."""
        with self._write_tx("release quarantined usage") as conn:
            now = self._clock()
            row, changed = quarantine.decide(conn, ref, quarantine.RELEASED, now)
            if changed:
                window = UsageWindow(row.tenant, row.source, row.series, row.window_start,
                                     row.window_end, row.record)  # fmt: skip
                usage.record_windows(conn, [window], None, now)
            return row, changed

    def discard_quarantined(self, ref: str) -> tuple[QuarantineRow, bool]:
        """Discard held usage for good (it stays in the ledger, never billed). Returns the
        entry and whether it changed now. A released entry is an InputError naming its id."""
        with self._write_tx("discard quarantined usage") as conn:
            return quarantine.decide(conn, ref, quarantine.DISCARDED, self._clock())

    # -- totals --------------------------------------------------------------------------

    def period_totals(self, tenant: str, period: Period) -> UsageTotals:
        return self._read("period totals", lambda c: queries.period_totals(c, tenant, period))

    def all_period_totals(self, period: Period) -> dict[str, UsageTotals]:
        return self._read("period totals", lambda c: queries.all_period_totals(c, period))

    def daily_totals(
        self, tenant: str | None, from_day: date, to_day: date
    ) -> dict[str, dict[date, UsageTotals]]:
        """Totals per tenant per UTC day in [from_day, to_day] (all tenants if None)."""
        return self._read(
            "daily totals", lambda c: queries.daily_totals(c, tenant, from_day, to_day)
        )

    def late_totals(self, tenant: str, period: Period) -> dict[Period, UsageTotals]:
        """Late usage booked into `period`, per the finalised period it belongs to."""
        return self._read("late totals", lambda c: queries.late_totals(c, tenant, period))

    def booked_before(self, tenant: str, period: Period, before: Period) -> UsageTotals:
        """Usage of `period` booked in periods before `before`."""
        return self._read(
            "booked totals", lambda c: queries.booked_before(c, tenant, period, before)
        )

    def window_records(self, tenant: str, period: Period) -> list[UsageRecord]:
        """Usage records of the metering windows of `tenant` that start in `period`."""
        return self._read("window records", lambda c: queries.window_records(c, tenant, period))

    def tenants(self, period: Period) -> list[str]:
        """Tenants with usage, terms or a statement in the period."""

        def run(conn: Connection) -> list[str]:
            names = set(queries.tenants_with_usage(conn, period))
            names.update(statements.finalized_tenants(conn, period))
            names.update(statements.terms_tenants(conn, period))
            return sorted(names)

        return self._read("tenants", run)

    # -- terms and statements ------------------------------------------------------------

    def set_terms(
        self,
        tenant: str,
        period: Period,
        plan: PricePlanSpec,
        discount_percent: Decimal = Decimal(0),
    ) -> None:
        with self._write_tx("set terms") as conn:
            statements.set_terms(conn, tenant, period, plan, discount_percent, self._clock())

    def get_terms(self, tenant: str, period: Period) -> Terms | None:
        return self._read("get terms", lambda c: statements.get_terms(c, tenant, period))

    def open_periods(self) -> list[tuple[str, Period]]:
        """(tenant, period) with terms or usage booked and no final statement, in order."""

        def run(conn: Connection) -> list[tuple[str, Period]]:
            return statements.open_periods(conn, queries.periods_with_usage(conn))

        return self._read("open periods", run)

    def ensure_billing_state(self, tenant: str) -> None:
        """Create the tenant's billing state row (needed before its first period close)."""
        with self._write_tx("billing state") as conn:
            statements.ensure_billing_state(conn, tenant, self._clock())

    def unannounced(self) -> list[Finalised]:
        """Finalised statements whose PeriodClosed Event was not marked posted yet."""
        return self._read(
            "unannounced statements", lambda c: statements.finalised(c, unannounced=True)
        )

    def finalised(self) -> list[Finalised]:
        """Every finalised statement (tenant, period, currency, total, when), in order."""
        return self._read("finalised statements", statements.finalised)

    def mark_announced(self, tenant: str, period: Period) -> None:
        with self._write_tx("mark announced") as conn:
            statements.mark_announced(conn, tenant, period, self._clock())

    def finalize_statement(self, tenant: str, period: Period, record: StatementRecord) -> bool:
        """Close the period with this statement. True if stored now, False if the same
        statement already was; a different one raises ConflictError."""
        with self._write_tx("finalize statement") as conn:
            return statements.finalize(conn, tenant, period, record, self._clock())

    def get_statement(self, tenant: str, period: Period) -> str | None:
        """The finalised statement's body (JSON) of a closed period (None while it is open)."""
        return self._read("get statement", lambda c: statements.get(c, tenant, period))

    # -- wallets -------------------------------------------------------------------------

    def topup(self, tenant: str, amount: Decimal, currency: str, key: str) -> Decimal:
        """Add to a prepaid balance; idempotent by key. Returns the balance after it."""
        with self._write_tx("wallet topup") as conn:
            return wallets.topup(conn, tenant, amount, currency, key, self._clock())

    def settle(
        self, tenant: str, period: Period, due: Decimal, currency: str, *, final: bool = False
    ) -> Settlement:
        """Pay what `period` is due from the wallet, as far as the balance goes (see
        `wallets.settle`): one transaction under the wallet row's lock."""
        with self._write_tx("wallet settle") as conn:
            return wallets.settle(
                conn, tenant, str(period), due, currency, self._clock(), final=final
            )

    def settlements(self, tenant: str) -> list[Settlement]:
        """Each period's due and paid amounts for `tenant`, oldest first."""
        return self._read("wallet settlements", lambda c: wallets.settlements(c, tenant))

    def balance(self, tenant: str) -> Decimal:
        return self.wallet(tenant).balance

    def wallet(self, tenant: str) -> WalletBalance:
        return self._read("wallet balance", lambda c: wallets.get_balance(c, tenant))

    # -- enforcement (write-ahead log; see ledger.enforcement) ---------------------------

    def active_suspensions(self) -> dict[str, SuspensionRow]:
        """Per tenant, the suspension not restored yet."""
        return self._read("active suspensions", enforcement.active)

    def latest_suspensions(self) -> dict[str, SuspensionRow]:
        """Per tenant, the active suspension, else the last restored one."""
        return self._read("latest suspensions", enforcement.latest)

    def start_suspension(
        self, tenant: str, period: Period, trigger: str, limit: Decimal | None, reason: str
    ) -> tuple[SuspensionRow, bool]:
        """Start a suspension (True), or return the tenant's active one (False)."""
        with self._write_tx("start suspension") as conn:
            return enforcement.start(
                conn, tenant, str(period), trigger, limit, reason, self._clock()
            )

    def suspension(self, suspension_id: str) -> SuspensionRow | None:
        return self._read("suspension", lambda c: enforcement.get(c, suspension_id))

    def suspension_workloads(self, suspension_id: str) -> list[WorkloadRow]:
        return self._read("suspended workloads", lambda c: enforcement.workloads(c, suspension_id))

    def record_workloads(
        self,
        suspension_id: str,
        records: Sequence[WorkloadRecord],
        replaced: Sequence[WorkloadRecord] = (),
    ) -> int:
        """Write-ahead: what these workloads have now, before they are changed (rows of
        workloads recorded earlier are kept; `replaced` overwrite theirs). New rows."""
        with self._write_tx("record workloads") as conn:
            now = self._clock()
            for record in replaced:
                enforcement.replace(conn, suspension_id, record, now)
            return enforcement.record(conn, suspension_id, records, now)

    def set_workload_states(
        self,
        suspension_id: str,
        keys: Sequence[WorkloadKey],
        state: str,
        *,
        note: str | None = None,
    ) -> None:
        if not keys:
            return
        with self._write_tx("workload states") as conn:
            enforcement.set_workload_states(
                conn, suspension_id, keys, state, self._clock(), note=note
            )

    def set_workload_autoscaler(
        self, suspension_id: str, key: WorkloadKey, autoscaler: str | None, keda: str | None
    ) -> None:
        with self._write_tx("workload autoscaler") as conn:
            enforcement.set_autoscaler(
                conn, suspension_id, key, autoscaler=autoscaler, keda_object=keda
            )

    def move_suspension(
        self,
        suspension_id: str,
        expect: str | Sequence[str],
        state: str,
        *,
        stopped_at: datetime | None = None,
        overshoot: Decimal | None = None,
        notices: Sequence[Notice] = (),
    ) -> bool:
        """Compare-and-set the suspension's state; the notices announcing the change are
        recorded in the same transaction (so they go out once, and only if it moved)."""
        with self.transaction("move suspension") as tx:
            moved = enforcement.set_state(
                tx.conn, suspension_id, expect, state, tx.now,
                stopped_at=stopped_at, overshoot=overshoot,
            )  # fmt: skip
            if moved and notices:
                tx.record_notices(notices)
            return moved

    def set_overshoot(self, suspension_id: str, overshoot: Decimal) -> None:
        with self._write_tx("set overshoot") as conn:
            enforcement.set_overshoot(conn, suspension_id, overshoot)

    # -- notifications (outbox) ----------------------------------------------------------

    def record_notices(self, notices: Sequence[Notice]) -> list[Notice]:
        """Record notices once per (tenant, key) (see `ledger.outbox`): returns those
        recorded now; one recorded before (by this or another replica) is skipped."""
        with self._write_tx("record notices") as conn:
            return outbox.record(conn, notices, self._clock())

    def notice_keys(self, tenant: str, prefix: str = "") -> set[str]:
        """The notice keys recorded for `tenant` that start with `prefix`."""
        return self._read("notice keys", lambda c: outbox.keys(c, tenant, prefix))

    def notices(self, tenant: str | None = None) -> list[OutboxRow]:
        """Every stored notice (of `tenant`), oldest first."""
        return self._read("notices", lambda c: outbox.rows(c, tenant))

    def notice(self, event_id: str) -> OutboxRow | None:
        return self._read("notice", lambda c: outbox.get(c, event_id))

    def pending_events(self, limit: int = 500) -> list[OutboxRow]:
        """Notices whose Kubernetes Event is not marked posted yet, oldest first."""
        return self._read("pending events", lambda c: outbox.pending_events(c, limit))

    def mark_events_posted(self, ids: Sequence[str]) -> int:
        """Mark these notices' Events posted; returns how many changed now."""
        with self._write_tx("mark events posted") as conn:
            return outbox.mark_events_posted(conn, ids)

    def due_webhooks(self, now: datetime, limit: int = 100) -> list[OutboxRow]:
        """Pending webhook deliveries whose next attempt is due at `now`, oldest first."""
        return self._read("due webhooks", lambda c: outbox.due_webhooks(c, now, limit))

    def record_attempt(
        self,
        event_id: str,
        now: datetime,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        seen_attempts: int | None = None,
    ) -> bool:
        """Record a webhook attempt: delivered; failed, next at `next_attempt_at`; or failed
        for good (`next_attempt_at` None: dead-lettered). Compare-and-set on the row being
        pending (and on `seen_attempts`, the count the attempt read, for a failure): True if
        it changed."""
        with self._write_tx("record webhook attempt") as conn:
            return outbox.record_attempt(
                conn, event_id, now, delivered=delivered, error=error,
                next_attempt_at=next_attempt_at, seen_attempts=seen_attempts,
            )  # fmt: skip

    def dead_letter(self, event_id: str, now: datetime, error: str) -> bool:
        """Give a pending webhook delivery up unattempted (the webhook was removed)."""
        with self._write_tx("dead-letter webhook") as conn:
            return outbox.dead_letter(conn, event_id, now, error)

    def prune_notices(self, before: Period) -> int:
        """Delete the finished notices of periods before `before` (`outbox.prune`)."""
        with self._write_tx("prune notices") as conn:
            return outbox.prune(conn, str(before))

    def delivery_summaries(self) -> dict[str, DeliverySummary]:
        """Per tenant: the latest attempted webhook delivery and the dead-letter count."""
        return self._read("delivery summaries", outbox.delivery_summaries)
