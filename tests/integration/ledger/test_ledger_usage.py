"""Usage recording: idempotency, conflicts, rollups == accumulate(), checkpoints, decimals."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from kubemeter_operator.api.usage import USAGE_LIST, GpuUsage, UsageRecord
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import Ledger, UsageWindow
from kubemeter_operator.ledger.columns import plain
from kubemeter_operator.ledger.schema import usage_event, usage_rollup, usage_window
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.totals import Quantities, UsageTotals, accumulate

NOV = Period(2026, 11)


def recs(*items: dict[str, Any]) -> list[UsageRecord]:
    return USAGE_LIST.validate_python(list(items))


def tok(i: int, prompt: int = 10, ts: str = "2026-11-03T10:00:00Z", **kw: Any) -> dict[str, Any]:
    return {"kind": "tokens", "id": f"e{i}", "model": "llama", "promptTokens": prompt,
            "timestamp": ts, **kw}  # fmt: skip


def count(ledger: Ledger, table: Any) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_replay_is_a_no_op(ledger: Ledger) -> None:
    batch = recs(tok(1), tok(2, prompt=5))
    assert ledger.record_events("acme", batch).accepted == 2
    before = ledger.period_totals("acme", NOV)
    again = ledger.record_events("acme", batch)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert ledger.period_totals("acme", NOV) == before
    assert count(ledger, usage_event) == 2


def test_replay_in_another_offset_is_still_a_replay(ledger: Ledger) -> None:
    ledger.record_events("acme", recs(tok(1, ts="2026-11-03T10:00:00Z")))
    result = ledger.record_events("acme", recs(tok(1, ts="2026-11-03T11:00:00+01:00")))
    assert result.duplicates == 1


def test_conflict_names_the_id_and_writes_nothing(ledger: Ledger) -> None:
    ledger.record_events("acme", recs(tok(1)))
    before = ledger.period_totals("acme", NOV)
    with pytest.raises(ConflictError) as err:
        ledger.record_events("acme", recs(tok(2), tok(3), tok(1, prompt=11), tok(4)))
    assert err.value.key == "e1"
    assert "e1" in str(err.value)
    assert count(ledger, usage_event) == 1
    assert ledger.period_totals("acme", NOV) == before


def test_event_ids_are_per_tenant(ledger: Ledger) -> None:
    """Tenant B's `req-1` is its own event, whatever tenant A did with the same id."""
    assert ledger.record_events("acme", recs(tok(1))).accepted == 1
    assert ledger.record_events("globex", recs(tok(1))).accepted == 1
    assert ledger.record_events("globex", recs(tok(1))).duplicates == 1
    with pytest.raises(ConflictError, match="e1"):
        ledger.record_events("globex", recs(tok(1, prompt=7)))
    assert ledger.period_totals("globex", NOV) == ledger.period_totals("acme", NOV) != {}


def test_totals_that_would_overflow_64_bits_are_an_input_error(ledger: Ledger) -> None:
    """A sum past 2^63 - 1 is refused naming `quantity` (SQLite would otherwise turn the
    integer column into a REAL); nothing of that batch is written."""
    big = 10**15  # the largest count one record may carry
    batches = [recs(*(tok(i * 1000 + j, prompt=big) for j in range(1000))) for i in range(10)]
    for batch in batches[:9]:  # 9,000 x 10^15 still fits
        ledger.record_events("acme", batch)
    accepted = 9000
    with pytest.raises(InputError) as err:  # 10,000 x 10^15 > 2^63 - 1
        ledger.record_events("acme", batches[9])
    assert err.value.field == "quantity"
    (qty,) = ledger.period_totals("acme", NOV).values()
    assert qty.prompt_tokens == accepted * big <= 2**63 - 1
    assert type(qty.prompt_tokens) is int


def test_conflict_within_one_batch(ledger: Ledger) -> None:
    with pytest.raises(ConflictError, match="e1"):
        ledger.record_events("acme", recs(tok(1), tok(1, prompt=99)))
    assert count(ledger, usage_event) == 0
    assert ledger.record_events("acme", recs(tok(1), tok(1))).duplicates == 1


def test_missing_id_names_the_field(ledger: Ledger) -> None:
    batch = recs(tok(1), {"kind": "steps", "steps": 3, "timestamp": "2026-11-03T10:00:00Z"})
    with pytest.raises(InputError) as err:
        ledger.record_events("acme", batch)
    assert err.value.field == "[1].id"
    assert count(ledger, usage_event) == 0


def test_custom_quantity_beyond_scale_is_refused(ledger: Ledger) -> None:
    batch = recs({"kind": "custom", "id": "c1", "name": "credits",
                  "quantity": "0.0000000000001", "timestamp": "2026-11-03T10:00:00Z"})  # fmt: skip
    with pytest.raises(InputError) as err:
        ledger.record_events("acme", batch)
    assert err.value.field == "[0].quantity"


def random_records(seed: int, n: int = 300) -> list[UsageRecord]:
    rng = random.Random(seed)
    start = datetime(2026, 10, 20, tzinfo=UTC)
    out: list[dict[str, Any]] = []
    for i in range(n):
        at = start + timedelta(seconds=rng.randrange(0, 60 * 86400))
        kind = rng.choice(["gpu", "gpu", "tokens", "steps", "requests", "custom"])
        base: dict[str, Any] = {"id": f"r{seed}-{i}", "kind": kind}
        if kind == "gpu":
            length = rng.choice([1, 999, 3_600_000, 86_400_000 * 3 + 17, 86_400_000 * 40])
            alloc = rng.randrange(0, length * 2 + 1)
            base |= {"model": rng.choice(["H100", "A100"]),
                     "migProfile": rng.choice([None, "1g.10gb"]), "allocatedMs": alloc,
                     "activeMs": rng.randrange(0, alloc + 1),
                     "windowStart": at.isoformat(),
                     "windowEnd": (at + timedelta(milliseconds=length)).isoformat()}  # fmt: skip
            base = {k: v for k, v in base.items() if v is not None}
        elif kind == "tokens":
            p = rng.randrange(0, 100_000)
            base |= {"model": "llama", "promptTokens": p,
                     "completionTokens": rng.randrange(9999),
                     "cachedPromptTokens": rng.randrange(0, p + 1),
                     "timestamp": at.isoformat()}  # fmt: skip
        elif kind == "steps":
            base |= {"steps": rng.randrange(50), "timestamp": at.isoformat()}
        elif kind == "requests":
            base |= {"model": "llama", "requests": rng.randrange(50), "timestamp": at.isoformat()}
        else:
            q = Decimal(rng.randrange(10**9)).scaleb(-rng.randrange(0, 13))
            base |= {"name": "credits", "quantity": format(q, "f"), "timestamp": at.isoformat()}
        out.append(base)
    return recs(*out)


def test_rollup_totals_equal_accumulate(ledger: Ledger) -> None:
    records = random_records(1)
    for i in range(0, len(records), 37):
        ledger.record_events("acme", records[i : i + 37])
    ledger.record_events("acme", records[:50])  # replays change nothing
    for period in (Period(2026, 10), NOV, Period(2026, 12), Period(2027, 1)):
        assert ledger.period_totals("acme", period) == accumulate(records, period)
    assert ledger.all_period_totals(NOV) == {"acme": accumulate(records, NOV)}


def test_daily_totals_sum_to_period_totals(ledger: Ledger) -> None:
    records = random_records(2)
    ledger.record_events("acme", records)
    daily = ledger.daily_totals("acme", date(2026, 11, 1), date(2026, 11, 30))["acme"]
    summed: UsageTotals = {}
    for totals in daily.values():
        for key, qty in totals.items():
            summed.setdefault(key, Quantities()).add(qty)
    assert summed == accumulate(records, NOV)
    for totals in daily.values():
        for qty in totals.values():
            assert 0 <= qty.active_ms <= qty.allocated_ms or qty.allocated_ms == 0


def test_window_straddling_months_is_split_exactly(ledger: Ledger) -> None:
    rec = recs({"id": "w", "kind": "gpu", "model": "H100", "allocatedMs": 7_200_000,
                "activeMs": 3_600_001, "windowStart": "2026-10-31T23:00:00Z",
                "windowEnd": "2026-11-01T01:00:00Z"})  # fmt: skip
    ledger.record_events("acme", rec)
    oct_ = ledger.period_totals("acme", Period(2026, 10))
    nov = ledger.period_totals("acme", NOV)
    (o,) = oct_.values()
    (n,) = nov.values()
    assert (o.allocated_ms, n.allocated_ms) == (3_600_000, 3_600_000)
    assert o.active_ms + n.active_ms == 3_600_001


def window(series: str, minute: int, alloc: int, tenant: str = "acme") -> UsageWindow:
    start = datetime(2026, 11, 2, 0, minute, tzinfo=UTC)
    end = start + timedelta(minutes=1)
    rec = GpuUsage(model="H100", allocated_ms=alloc, active_ms=0, window_start=start,
                   window_end=end)  # fmt: skip
    return UsageWindow(tenant, "prometheus:gpu-allocated", series, start, end, rec)


def test_windows_idempotent_with_checkpoint_in_same_transaction(ledger: Ledger) -> None:
    first = [window("gpu-0", 0, 60_000), window("gpu-1", 0, 30_000)]
    r = ledger.record_windows(first, checkpoints={"gpu": {"until": "00:01"}})
    assert (r.accepted, r.duplicates) == (1 + 1, 0)
    assert ledger.get_checkpoint("gpu") == {"until": "00:01"}
    r = ledger.record_windows(first, checkpoints={"gpu": {"until": "00:01"}})
    assert (r.accepted, r.duplicates) == (0, 2)
    (qty,) = ledger.period_totals("acme", NOV).values()
    assert qty.allocated_ms == 90_000
    # a conflicting window rolls back everything in the call, checkpoint included
    with pytest.raises(ConflictError) as err:
        ledger.record_windows(
            [window("gpu-0", 1, 60_000), window("gpu-1", 0, 31_000)],
            checkpoints={"gpu": {"until": "00:02"}},
        )
    assert "gpu-1" in str(err.value)
    assert ledger.get_checkpoint("gpu") == {"until": "00:01"}
    assert count(ledger, usage_window) == 2
    (qty,) = ledger.period_totals("acme", NOV).values()
    assert qty.allocated_ms == 90_000
    assert ledger.get_checkpoint("missing") is None
    ledger.set_checkpoint("other", {"n": 1})
    assert ledger.get_checkpoint("other") == {"n": 1}


def test_checkpoint_guard_refuses_a_write_based_on_a_stale_checkpoint(ledger: Ledger) -> None:
    """Two writers read the same checkpoint; the second to commit is refused whole."""
    read_by_both = ledger.get_checkpoint("metering")
    assert read_by_both is None
    ledger.record_windows(
        [window("gpu-0", 0, 60_000)],
        checkpoints={"metering": {"time": "00:01"}},
        expect_checkpoints={"metering": read_by_both},
    )
    with pytest.raises(ConflictError) as err:
        ledger.record_windows(
            [window("gpu-0", 1, 60_000)],  # even a window with no key clash
            checkpoints={"metering": {"time": "00:01-other"}},
            expect_checkpoints={"metering": read_by_both},
        )
    assert "metering" in str(err.value)
    assert ledger.get_checkpoint("metering") == {"time": "00:01"}
    assert count(ledger, usage_window) == 1
    # with the checkpoint it read now, the writer goes ahead
    ledger.record_windows(
        [window("gpu-0", 1, 60_000)],
        checkpoints={"metering": {"time": "00:02"}},
        expect_checkpoints={"metering": {"time": "00:01"}},
    )
    assert count(ledger, usage_window) == 2


@pytest.mark.parametrize(
    "text",
    ["0", "1", "0.000000000001", "12345678901234567890123456.123456789012", "10.5",
     "99999999999999999999999999.999999999999"],
)  # fmt: skip
def test_decimal_round_trip_is_exact(ledger: Ledger, text: str) -> None:
    value = Decimal(text)
    ledger.record_events("acme", recs({"kind": "custom", "id": "c", "name": "x", "quantity": text,
                                       "timestamp": "2026-11-03T10:00:00Z"}))  # fmt: skip
    (qty,) = ledger.period_totals("acme", NOV).values()
    assert qty.custom == value
    assert format(qty.custom, "f") == plain(value)  # same digits, no trailing zeros
    with ledger.engine.connect() as conn:
        stored = conn.execute(select(usage_rollup.c.custom)).scalar_one()
    assert stored == value
    if len(value.as_tuple().digits) > 28:
        return  # stored exactly; rating sums use Python's default 28-digit context
    # exact sums, no float anywhere
    ledger.record_events("acme", recs({"kind": "custom", "id": "d", "name": "x",
                                       "quantity": "0.000000000001",
                                       "timestamp": "2026-11-04T10:00:00Z"}))  # fmt: skip
    (qty,) = ledger.period_totals("acme", NOV).values()
    assert qty.custom == value + Decimal("0.000000000001")


def test_sqlite_commits_are_durable(tmp_path: Any) -> None:
    """synchronous=FULL: a commit is on disk (fsynced) when it returns, WAL or not."""
    with Ledger.open(f"sqlite:///{tmp_path / 'd.db'}") as led, led.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
