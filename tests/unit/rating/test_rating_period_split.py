"""Splitting GPU windows across periods conserves milliseconds and keeps active <= allocated
in every part, however many months a window spans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from kubemeter_operator.api.usage import GpuUsage
from kubemeter_operator.usage.periods import Period, split_gpu_window

START = datetime(2026, 9, 30, 23, 0, tzinfo=UTC)


@settings(max_examples=3000, deadline=None)
@given(
    st.integers(min_value=1, max_value=200 * 24 * 3600 * 1000),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=30 * 24 * 3600 * 1000),
)
def test_parts_conserve_and_keep_active_within_allocated(
    length_ms: int, allocated: int, active: int, offset_ms: int
) -> None:
    active = min(active, allocated)
    start = START + timedelta(milliseconds=offset_ms)
    record = GpuUsage(
        model="NVIDIA H100 80GB HBM3",
        allocated_ms=allocated,
        active_ms=active,
        window_start=start,
        window_end=start + timedelta(milliseconds=length_ms),
    )
    parts = split_gpu_window(record)
    assert sum(p.allocated_ms for _, p in parts) == allocated
    assert sum(p.active_ms for _, p in parts) == active
    for period, part in parts:
        assert 0 <= part.active_ms <= part.allocated_ms
        assert Period.of(part.window_start) == period
        assert part.window_end <= period.end
    assert [p for p, _ in parts] == sorted({p for p, _ in parts})


def test_three_month_window_keeps_active_within_allocated() -> None:
    record = GpuUsage(
        model="X",
        allocated_ms=5,
        active_ms=4,
        window_start=datetime(2026, 10, 31, 23, 59, 59, 999000, tzinfo=UTC),
        window_end=datetime(2026, 12, 1, 0, 0, 0, 1000, tzinfo=UTC),
    )
    parts = split_gpu_window(record)
    assert [str(p) for p, _ in parts] == ["2026-10", "2026-11", "2026-12"]
    assert all(p.active_ms <= p.allocated_ms for _, p in parts)
    assert sum(p.allocated_ms for _, p in parts) == 5
