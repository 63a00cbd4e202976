"""Billing periods (calendar months, UTC) and exact splitting of usage across them.

A period is parsed (`Period.parse`) or found (`Period.of`) only in the years
`FIRST_YEAR`..`LAST_YEAR` (1970..9998), the years a usage instant may have: so every period
kubemeter bills has a representable start and end. Anything else is a `PeriodError` (a
`ValueError` whose `problem` a caller can put after its own field name, e.g. `--period`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from kubemeter_operator.api.usage import FIRST_YEAR, LAST_YEAR, GpuUsage, UsageRecord

_PERIOD_RE = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
_MS = timedelta(milliseconds=1)


class PeriodError(ValueError):
    """A text that is no billable period, or an instant outside the billable years.

    `problem` is the message without a field name; `str()` names the field `period`."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"period: {problem}")


_YEARS = f"the years {FIRST_YEAR}..{LAST_YEAR}"
_FIRST = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
_END = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Period:
    """A calendar month in UTC: [start, end)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        """`YYYY-MM` in the years FIRST_YEAR..LAST_YEAR; else a `PeriodError`."""
        match = _PERIOD_RE.match(text)
        if not match:
            raise PeriodError(f"{text!r} is not of the form YYYY-MM")
        year = int(match.group(1))
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise PeriodError(f"{text!r} is outside {_YEARS}")
        return cls(year, int(match.group(2)))

    @classmethod
    def of(cls, instant: datetime) -> Period:
        """The period holding an aware instant of the years FIRST_YEAR..LAST_YEAR (UTC)."""
        if instant.tzinfo is None:
            raise ValueError("timestamps must carry a time zone")
        if not _FIRST <= instant < _END:  # aware comparison: never overflows
            raise PeriodError(f"{instant.isoformat()} is outside {_YEARS} (UTC)")
        utc = instant.astimezone(UTC)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    @property
    def days(self) -> list[date]:
        first = self.start.date()
        return [first + timedelta(days=i) for i in range((self.end - self.start).days)]

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def _share(total: int, part_ms: int, whole_ms: int) -> int:
    return total * part_ms // whole_ms


def split_gpu_window(record: GpuUsage) -> list[tuple[Period, GpuUsage]]:
    """Split a GPU window at period boundaries, exactly and conserving every millisecond.

    Allocated milliseconds are shared in proportion to the wall time each part covers
    (cumulative integer division, so the parts sum to the whole). Active milliseconds follow
    the same proportion, but a part never gets more active than allocated time: what does
    not fit is carried to the next part. Every part keeps active <= allocated.
    """
    start, end = record.window_start.astimezone(UTC), record.window_end.astimezone(UTC)
    first, last = Period.of(start), Period.of(end - _MS)
    if first == last:
        return [(first, record)]
    whole_ms = (end - start) // _MS
    parts: list[tuple[Period, GpuUsage]] = []
    period, cursor = first, start
    alloc_done = active_done = 0
    while True:
        part_end = min(period.end, end)
        covered_ms = (part_end - start) // _MS
        alloc_cum = _share(record.allocated_ms, covered_ms, whole_ms)
        active_cum = _share(record.active_ms, covered_ms, whole_ms)
        alloc = alloc_cum - alloc_done
        active = min(alloc, max(0, active_cum - active_done))
        alloc_done += alloc
        active_done += active
        update = {
            "window_start": cursor,
            "window_end": part_end,
            "allocated_ms": alloc,
            "active_ms": active,
        }
        parts.append((period, record.model_copy(update=update)))
        if part_end >= end:
            return parts
        period, cursor = period.next(), part_end


def split_by_period(record: UsageRecord) -> list[tuple[Period, UsageRecord]]:
    """The parts of a record that fall into each period (instant records never split)."""
    if isinstance(record, GpuUsage):
        return list(split_gpu_window(record))
    return [(Period.of(record.at), record)]
