"""Exact attribution of usage to UTC days (for daily rollups and revenue recognition).

A record is first split by period (`split_by_period`), then each period part is split at
UTC midnights. Splitting the period parts (rather than the whole window) keeps the days of a
period summing exactly to that period's part, so daily and period totals always agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from kubemeter_operator.api.usage import GpuUsage, UsageRecord
from kubemeter_operator.usage.periods import Period, split_by_period

_MS = timedelta(milliseconds=1)
_DAY = timedelta(days=1)


def _cumulative_split(total: int, cuts: list[int], whole: int) -> list[int]:
    """Split `total` over consecutive parts ending at `cuts` (ms offsets; last == whole).

    Part i gets floor(total*cut_i/whole) - floor(total*cut_{i-1}/whole): every part is
    non-negative and the parts sum to `total` exactly.
    """
    out: list[int] = []
    before = 0
    for cut in cuts:
        upto = total * cut // whole
        out.append(upto - before)
        before = upto
    return out


def split_gpu_window_by_day(record: GpuUsage) -> list[tuple[date, GpuUsage]]:
    """Split a GPU window at UTC midnights, conserving allocated and active milliseconds.

    Active and idle (allocated − active) time are split separately in proportion to wall
    time, so each day's active never exceeds its allocated and both sum to the whole.
    """
    start, end = record.window_start.astimezone(UTC), record.window_end.astimezone(UTC)
    first_day = start.date()
    last_day = (end - _MS).date()
    if first_day == last_day:
        return [(first_day, record)]
    whole_ms = (end - start) // _MS
    bounds: list[tuple[date, datetime, datetime]] = []
    day, cursor = first_day, start
    while cursor < end:
        day_end = min(datetime(day.year, day.month, day.day, tzinfo=UTC) + _DAY, end)
        bounds.append((day, cursor, day_end))
        day, cursor = day + timedelta(days=1), day_end
    cuts = [(b_end - start) // _MS for _, _, b_end in bounds]
    cuts[-1] = whole_ms
    if record.active_ms <= record.allocated_ms:
        active = _cumulative_split(record.active_ms, cuts, whole_ms)
        idle = _cumulative_split(record.allocated_ms - record.active_ms, cuts, whole_ms)
        allocated = [a + i for a, i in zip(active, idle, strict=True)]
    else:  # not produced by validated records; keep both sums exact anyway
        active = _cumulative_split(record.active_ms, cuts, whole_ms)
        allocated = _cumulative_split(record.allocated_ms, cuts, whole_ms)
    return [
        (
            d,
            record.model_copy(
                update={
                    "window_start": b_start,
                    "window_end": b_end,
                    "allocated_ms": alloc,
                    "active_ms": act,
                }
            ),
        )
        for (d, b_start, b_end), alloc, act in zip(bounds, allocated, active, strict=True)
    ]


def split_by_day(record: UsageRecord) -> list[tuple[Period, date, UsageRecord]]:
    """The parts of a record per (period, UTC day). Instant records never split."""
    parts: list[tuple[Period, date, UsageRecord]] = []
    for period, part in split_by_period(record):
        if isinstance(part, GpuUsage):
            parts.extend((period, d, p) for d, p in split_gpu_window_by_day(part))
        else:
            parts.append((period, part.at.astimezone(UTC).date(), part))
    return parts
