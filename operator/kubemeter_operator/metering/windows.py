"""Choosing the next metering window (pure).

Window ends lie on a grid of ``step`` (the loop interval) measured from the Unix epoch, so
two replicas that meter the same span compute the same windows (their writes are duplicate
no-ops rather than conflicts). The end trails "now" by ``lag`` so Prometheus has ingested
the samples up to it (a late sample is not lost either way: it is counted in the next
window, because deltas are taken against the checkpointed values, not against time).

Catching up after an outage, the span since the checkpoint is stepped through in windows of
at most ``max_window``, and no window ever straddles a billing-period boundary, so backfilled
usage is attributed to the right period exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubemeter_operator.usage.periods import Period

_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    behind: bool = False
    """More windows are due right away (catching up)."""

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def period(self) -> Period:
        return Period.of(self.start)


def to_ms(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return (t - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def align_down(t: datetime, step: timedelta) -> datetime:
    step_ms = step // _MS
    if step_ms <= 0:
        raise ValueError("step must be at least 1 ms")
    return from_ms(to_ms(t) // step_ms * step_ms)


def next_window(
    cursor: datetime | None,
    now: datetime,
    *,
    step: timedelta,
    lag: timedelta,
    max_window: timedelta,
) -> Window | None:
    """The next window after ``cursor`` (the last window's end), or None when not yet due.

    Without a cursor (the very first cycle) the window is the last full ``step``.
    """
    if max_window < step:
        raise ValueError("max_window must be at least step")
    target = align_down(now - lag, step)
    start = target - step if cursor is None else cursor.astimezone(UTC)
    if target <= start:
        return None
    end = min(target, start + max_window, Period.of(start).end)
    return Window(start, end, behind=end < target)
