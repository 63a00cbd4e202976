"""Gaps, restarts and the metering start, through the whole operator cycle on simulated time
(the time-travel harness and its fake Prometheus) against real SQLite and PostgreSQL ledgers,
with the physics bounds on as the operator runs them.

A series Prometheus loses sight of for hours or days (a scrape gap) is remembered as a
tombstone; when it returns, only its increase since its last counted value is billed, over
the span it covers ([last seen, now], split exactly by day and period; a part in a finalised
period is late usage). Before this, a series unseen for 2 h was forgotten and its whole
counter billed again. Counters from before the ledger's metering start are not billed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemeter_operator.api.usage import GpuUsage, UsageRecord
from kubemeter_operator.billing import statements
from kubemeter_operator.metering.cycle import MeteringConfig
from kubemeter_operator.usage import Period

from support.timeaxis import ACTIVE, ALLOCATED, Series, to_ms
from support.timetravel import H100, MS_PER_HOUR, TimeTravel, check_invariants

pytestmark = pytest.mark.integration

OCT, NOV, DEC = Period(2026, 10), Period(2026, 11), Period(2026, 12)
STD: dict[str, Any] = {
    "currency": "USD",
    "platformFee": "100",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour", "included": "10",
         "pricing": {"model": "graduated", "tiers": [
             {"upTo": "100", "unitPrice": "2.50"}, {"unitPrice": "2.00"}]}},
    ],
}  # fmt: skip
BOUNDED = MeteringConfig(
    step=timedelta(minutes=5),
    lag=timedelta(minutes=2),
    max_window=timedelta(hours=1),
    scrape_margin=timedelta(minutes=3),
    prune_after=timedelta(hours=2),
    exporter_job="kubemeter-exporter",
    gpu_tolerance=timedelta(seconds=5),
    max_token_rate=1e6,
)
FIVE_MIN, HOUR = timedelta(minutes=5), timedelta(hours=1)


def at(period: Period, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(period.year, period.month, day, hour, minute, tzinfo=UTC)


class GapTruth(TimeTravel):
    """The truth as the product attributes a scrape gap: a counter's increase between two
    samples is spread evenly over the time between them (what the exporter's counter did for
    a pod that held its GPU throughout), rather than all landing on the first sample after
    the gap. Integer arithmetic as the ledger splits (floor of the proportional share);
    before a series' first sample it is 0, after its last it stays flat. With ``before``, only
    samples scraped before then are known (what a statement finalised then could have seen).
    Computed from the stored samples, without the operator's code."""

    def gpu_truth(self, tenant: str, start: datetime, end: datetime) -> list[GpuUsage]:
        return self._gpu(tenant, start, end, None)

    def usage_truth(
        self, tenant: str, period: Period, *, before: datetime | None = None
    ) -> list[UsageRecord]:
        return [*self._gpu(tenant, period.start, period.end, before),
                *self.event_truth(tenant, period, before=before)]  # fmt: skip

    def _gpu(
        self, tenant: str, start: datetime, end: datetime, before: datetime | None
    ) -> list[GpuUsage]:
        namespaces = set(self.world.tenants[tenant].spec.namespaces)
        cutoff = to_ms(before) if before is not None else None
        active = {s.key.labels: s for s in self.store.series(ACTIVE)}
        out: list[GpuUsage] = []
        for s in self.store.series(ALLOCATED):
            labels = dict(s.key.labels)
            if labels.get("namespace") not in namespaces:
                continue
            alloc = _value(s, end, cutoff) - _value(s, start, cutoff)
            act_series = active.get(s.key.labels)
            act = 0
            if act_series is not None:
                act = _value(act_series, end, cutoff) - _value(act_series, start, cutoff)
            if alloc:
                out.append(GpuUsage(model=labels.get("gpu_model", "unknown"),
                                    allocated_ms=alloc, active_ms=min(act, alloc),
                                    window_start=start, window_end=end))  # fmt: skip
        return out


class FreshLedger(TimeTravel):
    """A ledger whose metering starts at `start` on a fleet that ran before: the truth is
    what the counters did from `start` on (what they held before is not its usage)."""

    def gpu_truth(self, tenant: str, start: datetime, end: datetime) -> list[GpuUsage]:
        return super().gpu_truth(tenant, max(start, self.start), max(end, self.start))


def _value(s: Series, t: datetime, cutoff: int | None) -> int:
    times = list(s.times) if cutoff is None else [x for x in s.times if x < cutoff]
    t_ms = to_ms(t)
    i = bisect_right(times, t_ms) - 1
    if i < 0:
        return 0
    v = int(s.values[i])
    if times[i] == t_ms or i + 1 >= len(times):
        return v
    t0, t1, v1 = times[i], times[i + 1], int(s.values[i + 1])
    return v + (v1 - v) * (t_ms - t0) // (t1 - t0)


@pytest.fixture
def make(ledger_url: str) -> Iterator[Any]:
    made: list[TimeTravel] = []

    def factory(start: datetime, cls: type[TimeTravel] = TimeTravel, **kw: Any) -> TimeTravel:
        tt = cls(ledger_url, start=start, config=BOUNDED, **kw)
        tt.add_plan("std", STD)
        tt.add_tenant("acme", plan="std", namespaces=["acme"])
        made.append(tt)
        return tt

    yield factory
    for tt in made:
        tt.close()


def billed_ms(tt: TimeTravel, tenant: str = "acme") -> int:
    """Every GPU millisecond in the ledger for `tenant`, in whichever period it is booked."""
    total = 0
    for period in (OCT, NOV, DEC):
        for k, q in tt.ledger.period_totals(tenant, period).items():
            total += q.allocated_ms if k.kind == "gpu" else 0
        for late in tt.ledger.late_totals(tenant, period).values():
            total += sum(q.allocated_ms for k, q in late.items() if k.kind == "gpu")
    return total


def sample_truth(tt: TimeTravel, start: datetime, end: datetime) -> int:
    """`SeriesStore.increase` of every acme series: the truth the samples hold."""
    return sum(
        int(v)
        for labels, v in tt.store.increase(ALLOCATED, start, end).items()
        if dict(labels).get("namespace") == "acme"
    )


def gap_records(tt: TimeTravel, period: Period, longer_than: timedelta) -> list[GpuUsage]:
    return [
        r for r in tt.ledger.window_records("acme", period)
        if isinstance(r, GpuUsage) and r.window_end - r.window_start > longer_than
    ]  # fmt: skip


@pytest.mark.parametrize("gap", [timedelta(hours=3), timedelta(days=3)], ids=["3h", "3d"])
def test_a_scrape_gap_bills_exactly_the_increase_once(make: Any, gap: timedelta) -> None:
    start = at(NOV, 9, 12)
    tt = make(start)
    tt.gpu("acme", "train-0", start=start)
    tt.gpu("acme", "infer-0", start=start, utilisation="0.9")
    gap_from, gap_to = at(NOV, 10, 10, 1), at(NOV, 10, 10) + gap
    tt.scraper.gap(gap_from, gap_to)
    tt.advance(at(NOV, 10, 9), every=HOUR)
    tt.advance(at(NOV, 10, 11), every=FIVE_MIN)
    tt.advance(gap_to - HOUR, every=HOUR)
    tt.advance(gap_to + HOUR, every=FIVE_MIN)
    tt.advance(gap_to + timedelta(days=1), every=HOUR)
    check_invariants(tt)
    assert tt.ledger.quarantined(None) == []
    metered = tt.operator.metering.metered_until()
    assert metered is not None
    truth = sample_truth(tt, start, metered)
    assert billed_ms(tt) == truth
    # two pods that held their GPU all along: the truth is the wall time, not more (without
    # tombstones each series came back as new and its whole counter was billed again)
    assert truth == 2 * ((metered - start) // timedelta(milliseconds=1))
    # the returning series: one record each over the gap, [last seen, return]
    spans = gap_records(tt, NOV, timedelta(hours=2))
    assert [(r.window_start, r.window_end) for r in spans] == [(at(NOV, 10, 10), gap_to)] * 2
    assert all(r.allocated_ms == (gap_to - at(NOV, 10, 10)) // timedelta(milliseconds=1)
               for r in spans)  # fmt: skip


def test_a_series_born_in_a_long_gap_is_quarantined_until_released(make: Any) -> None:
    """A new series whose counter is older than the read's lookback cannot be told from a
    counter gone wild: it is held, and an admin's release bills it exactly."""
    start = at(NOV, 9, 12)
    tt = make(start)
    tt.gpu("acme", "train-0", start=start)
    tt.gpu("acme", "late-0", start=at(NOV, 11, 12))
    tt.scraper.gap(at(NOV, 10, 10, 1), at(NOV, 13, 10))
    tt.advance(at(NOV, 13, 12), every=HOUR)
    (held,) = tt.ledger.quarantined()
    assert held.record.pod == "late-0"
    born = at(NOV, 11, 12)  # its value when first read: all of its life so far
    assert held.record.allocated_ms == (held.window_end - born) // timedelta(milliseconds=1)  # type: ignore[union-attr]
    tt.ledger.release_quarantined(held.id)
    tt.advance(at(NOV, 14), every=HOUR)
    check_invariants(tt)
    metered = tt.operator.metering.metered_until()
    assert metered is not None
    assert billed_ms(tt) == sample_truth(tt, start, metered)


def test_a_gap_across_the_month_end_is_split_between_the_months(make: Any) -> None:
    """The gap ends before October is finalised: its October share is on October's invoice."""
    start = at(OCT, 30, 12)
    tt = make(start, cls=GapTruth)
    tt.gpu("acme", "train-0", start=start)
    last_seen, back = at(OCT, 31, 22), at(NOV, 1, 0, 30)
    tt.scraper.gap(last_seen + timedelta(minutes=1), back)
    tt.advance(at(OCT, 31, 21), every=HOUR)
    tt.advance(at(NOV, 1, 3), every=FIVE_MIN)
    tt.advance(at(NOV, 3), every=HOUR)
    check_invariants(tt)
    assert tt.ledger.quarantined(None) == []
    october = statements.final_statement(tt.ledger, "acme", OCT)
    assert october is not None
    assert october.line("gpu").quantity == (OCT.end - start) // timedelta(milliseconds=1)
    assert not tt.ledger.late_totals("acme", NOV)
    metered = tt.operator.metering.metered_until()
    assert metered is not None
    assert billed_ms(tt) == sample_truth(tt, start, metered)


def test_a_gap_across_a_finalised_month_end_books_its_october_share_as_late_usage(
    make: Any,
) -> None:
    """October is finalised while Prometheus still has no samples (its invoice holds what was
    seen); when the series returns, its October share is late usage on November's statement."""
    start = at(OCT, 30, 12)
    tt = make(start, cls=GapTruth)
    tt.gpu("acme", "train-0", start=start)
    last_seen, back = at(OCT, 31, 20), at(NOV, 2)
    tt.scraper.gap(last_seen + timedelta(minutes=1), back)
    tt.advance(at(OCT, 31, 19), every=HOUR)
    tt.advance(at(OCT, 31, 21), every=FIVE_MIN)
    tt.advance(at(NOV, 3), every=HOUR)
    october = statements.final_statement(tt.ledger, "acme", OCT)
    assert october is not None
    ms = timedelta(milliseconds=1)
    assert october.line("gpu").quantity == (last_seen - start) // ms
    late = tt.ledger.late_totals("acme", NOV)
    assert [q.allocated_ms for q in late[OCT].values()] == [(OCT.end - last_seen) // ms]
    running = statements.running_statement(tt.ledger, "acme", NOV)
    assert [a.period for a in running.adjustments] == ["2026-10"]
    check_invariants(tt)
    metered = tt.operator.metering.metered_until()
    assert metered is not None
    assert billed_ms(tt) == sample_truth(tt, start, metered)


def test_counters_from_before_the_metering_start_are_not_billed(make: Any) -> None:
    """A fresh ledger on a running fleet: the exporter's counters already hold a day; the
    first window takes them as the baseline, and only what follows is billed."""
    start = at(NOV, 28, 12)
    tt = make(start, cls=FreshLedger, fresh_ledger=True)
    tt.gpu("acme", "train-0", start=start - timedelta(days=1))
    tt.advance(start + timedelta(minutes=5), every=FIVE_MIN)
    assert tt.operator.metering.metered_until() == start  # the first window ...
    assert tt.ledger.period_totals("acme", NOV) == {}  # ... took the counters as the baseline
    tt.advance(at(DEC, 1, 3), every=HOUR)
    november = statements.final_statement(tt.ledger, "acme", NOV)
    assert november is not None
    assert november.line("gpu").quantity == (NOV.end - start) // timedelta(milliseconds=1)
    assert november.line("gpu").quantity < 3 * 24 * MS_PER_HOUR
    check_invariants(tt)
    assert H100 in {k.model for k in tt.ledger.period_totals("acme", DEC)}
