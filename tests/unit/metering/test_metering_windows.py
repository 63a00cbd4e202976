from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemeter_operator.metering.windows import align_down, from_ms, next_window, to_ms
from kubemeter_operator.usage.periods import Period

S15 = timedelta(seconds=15)
LAG = timedelta(seconds=30)
MAXW = timedelta(minutes=5)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_first_window_is_last_full_step() -> None:
    w = next_window(None, at("2026-11-10T12:00:47"), step=S15, lag=LAG, max_window=MAXW)
    assert w is not None
    assert (w.start, w.end) == (at("2026-11-10T12:00:00"), at("2026-11-10T12:00:15"))
    assert not w.behind


def test_not_due_yet() -> None:
    cursor = at("2026-11-10T12:00:15")
    assert (
        next_window(cursor, at("2026-11-10T12:00:50"), step=S15, lag=LAG, max_window=MAXW) is None
    )


def test_regular_window_ends_on_grid() -> None:
    cursor = at("2026-11-10T12:00:15")
    w = next_window(cursor, at("2026-11-10T12:01:01"), step=S15, lag=LAG, max_window=MAXW)
    assert w is not None
    assert (w.start, w.end, w.behind) == (cursor, at("2026-11-10T12:00:30"), False)


def test_catch_up_is_bounded() -> None:
    cursor = at("2026-11-10T12:00:00")
    w = next_window(cursor, at("2026-11-10T14:00:00"), step=S15, lag=LAG, max_window=MAXW)
    assert w is not None
    assert w.end == cursor + MAXW
    assert w.behind


def test_window_stops_at_period_end() -> None:
    cursor = at("2026-11-30T23:58:00")
    w = next_window(cursor, at("2026-12-01T00:10:00"), step=S15, lag=LAG, max_window=MAXW)
    assert w is not None
    assert w.end == at("2026-12-01T00:00:00")
    assert w.behind
    w2 = next_window(w.end, at("2026-12-01T00:10:00"), step=S15, lag=LAG, max_window=MAXW)
    assert w2 is not None
    assert w2.period == Period(2026, 12)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        next_window(None, at("2026-11-10T12:00:00"), step=MAXW, lag=LAG, max_window=S15)
    with pytest.raises(ValueError):
        to_ms(datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError):
        align_down(at("2026-11-10T12:00:00"), timedelta(0))


def test_ms_roundtrip() -> None:
    t = at("2026-11-10T12:00:00.123000")
    assert from_ms(to_ms(t)) == t


@settings(deadline=None, max_examples=60)
@given(
    start=st.integers(min_value=1_790_000_000_000, max_value=1_800_000_000_000),
    outage_s=st.integers(min_value=0, max_value=10 * 86_400),
    step_s=st.sampled_from([5, 15, 60]),
    max_s=st.sampled_from([300, 3600]),
)
def test_windows_tile_the_span_and_never_straddle_a_period(
    start: int, outage_s: int, step_s: int, max_s: int
) -> None:
    step, maxw = timedelta(seconds=step_s), timedelta(seconds=max(max_s, step_s))
    cursor = align_down(from_ms(start), step)
    now = cursor + timedelta(seconds=outage_s)
    n = 0
    while True:
        w = next_window(cursor, now, step=step, lag=LAG, max_window=maxw)
        if w is None:
            break
        assert w.start == cursor
        assert w.end > w.start
        assert w.duration <= maxw
        assert Period.of(w.start) == Period.of(w.end - timedelta(milliseconds=1))
        cursor = w.end
        n += 1
        if not w.behind:
            break
        assert n < 100_000
    assert cursor >= align_down(now - LAG, step) or outage_s * 1000 < (LAG + step) // timedelta(
        milliseconds=1
    )
