from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemeter_operator.metering import deltas as dl


def test_series_id_is_stable_and_order_independent() -> None:
    a = dl.series_id({"pod": "p", "namespace": "n"})
    b = dl.series_id({"namespace": "n", "pod": "p"})
    assert a == b
    assert len(a) == 16
    assert dl.series_id({"namespace": "n", "pod": "q"}) != a


def test_series_id_ignores_labels_outside_keys() -> None:
    keys = ("namespace", "pod")
    a = dl.series_id({"namespace": "n", "pod": "p", "job": "x"}, keys)
    b = dl.series_id({"namespace": "n", "pod": "p", "instance": "y"}, keys)
    assert a == b
    assert dl.series_id({"namespace": "n"}, keys) == dl.series_id(
        {"namespace": "n", "pod": ""}, keys
    )


def test_new_series_starts_from_zero() -> None:
    d = dl.delta(None, (500, 200))
    assert d == dl.SeriesDelta((500, 200), new=True)


def test_increase() -> None:
    d = dl.delta(dl.SeriesPoint((500, 200), 0), (800, 250))
    assert d.delta == (300, 50)
    assert not d.new
    assert not d.reset


def test_reset_counts_new_value() -> None:
    d = dl.delta(dl.SeriesPoint((500, 200), 0), (40, 300))
    assert d == dl.SeriesDelta((40, 300), reset=True)


def test_unchanged_is_zero() -> None:
    assert dl.delta(dl.SeriesPoint((7,), 0), (7,)).delta == (0,)


def test_negative_and_arity_errors() -> None:
    with pytest.raises(ValueError):
        dl.delta(None, (-1,))
    with pytest.raises(ValueError):
        dl.delta(dl.SeriesPoint((1, 2), 0), (1,))


def test_deltas_map() -> None:
    prev = {"a": dl.SeriesPoint((10,), 0), "gone": dl.SeriesPoint((99,), 0)}
    out = dl.deltas(prev, {"a": (15,), "b": (3,)})
    assert {k: v.delta for k, v in out.items()} == {"a": (5,), "b": (3,)}


def test_advance_updates_keeps_tombstones_and_prunes_old_ones() -> None:
    prev = {
        "a": dl.SeriesPoint((10,), 1_000),
        "idle": dl.SeriesPoint((5,), 9_000),
        "old": dl.SeriesPoint((5,), 1_000),
    }
    now = {"a": dl.SeriesPoint((12,), 10_000), "new": dl.SeriesPoint((1,), 10_000)}
    out = dl.advance(prev, now, prune_before_ms=5_000)
    assert out == {**now, "idle": dl.SeriesPoint((5,), 9_000)}


def test_advance_caps_tombstones_keeping_the_most_recent() -> None:
    prev = {f"s{i}": dl.SeriesPoint((i,), 1_000 + i) for i in range(10)}
    live = {"s0": dl.SeriesPoint((0,), 5_000)}
    out = dl.advance(prev, live, prune_before_ms=0, max_tombstones=3)
    assert set(out) == {"s0", "s9", "s8", "s7"}  # the live series never counts as one
    assert dl.advance(prev, live, prune_before_ms=0, max_tombstones=0) == live


def test_encode_decode_roundtrip() -> None:
    pts = {"b": dl.SeriesPoint((1, 2), 3), "a": dl.SeriesPoint((4, 5), 6)}
    enc = dl.encode(pts)
    assert list(enc) == ["a", "b"]
    assert enc["a"] == [4, 5, 6]
    assert dl.decode(enc, 2) == pts
    with pytest.raises(ValueError):
        dl.decode({"a": [1, 2]}, 2)
    assert dl.decode(None, 1) == {}


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=30))
def test_sum_of_deltas_of_monotonic_counter_is_final_value(increments: list[int]) -> None:
    """Reading a counter born at 0 at any points sums to its final value."""
    value, point, total = 0, None, 0
    for inc in increments:
        value += inc
        d = dl.delta(point, (value,))
        total += d.delta[0]
        point = dl.SeriesPoint((value,), 0)
    assert total == value
