"""Per-series counter deltas between a checkpoint and newly read values (pure).

* A series is identified by a stable id: a hash of its sorted label pairs (restricted to the
  identifying labels, so Prometheus target labels such as ``job`` do not change it).
* A series missing from the checkpoint starts from 0: counters are born at 0, and the
  exporter's ``exporter_instance`` label makes every restart a new series.
* A value below the checkpointed one is a counter reset: the new value is the delta (the
  Prometheus convention; should not happen with the exporter's counters).
* A series may carry several counters read together (GPU: allocated and active ms); a reset
  of any of them resets all of them.
* Series that are not read any more stay in the checkpoint as tombstones for a long time
  (see :func:`advance`), so one that returns is counted from its last value, not from 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Values = tuple[int, ...]


def series_id(labels: Mapping[str, str], keys: Iterable[str] | None = None) -> str:
    """A stable 16-hex-digit id of a series from its label pairs (``keys`` only, if given).

    A label in ``keys`` that the series lacks counts as the empty string, as in PromQL.
    """
    names = sorted(keys) if keys is not None else sorted(labels)
    text = "\x1e".join(f"{k}\x1f{labels.get(k, '')}" for k in names)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """A series' last counted values and when it was last seen (epoch milliseconds)."""

    values: Values
    seen_ms: int


@dataclass(frozen=True, slots=True)
class SeriesDelta:
    delta: Values
    new: bool = False
    """Not in the checkpoint: counted from 0."""
    reset: bool = False
    """Below the checkpoint: the new value was counted as the delta."""


def delta(previous: SeriesPoint | None, current: Values) -> SeriesDelta:
    """The increase of one series from ``previous`` to ``current``."""
    if any(v < 0 for v in current):
        raise ValueError(f"counter values cannot be negative: {current}")
    if previous is None:
        return SeriesDelta(current, new=True)
    old = previous.values
    if len(old) != len(current):
        raise ValueError(f"series arity changed: {old} -> {current}")
    if any(c < o for c, o in zip(current, old, strict=True)):
        return SeriesDelta(current, reset=True)
    return SeriesDelta(tuple(c - o for c, o in zip(current, old, strict=True)))


def deltas(
    previous: Mapping[str, SeriesPoint], current: Mapping[str, Values]
) -> dict[str, SeriesDelta]:
    """Deltas of every series in ``current`` (series absent from ``current`` contribute 0)."""
    return {sid: delta(previous.get(sid), values) for sid, values in current.items()}


def advance(
    previous: Mapping[str, SeriesPoint],
    current: Mapping[str, SeriesPoint],
    *,
    prune_before_ms: int,
    max_tombstones: int | None = None,
) -> dict[str, SeriesPoint]:
    """The checkpoint after a read: every series read now with its new point, and the
    *tombstones* of series not read now (their last counted values and when they last
    changed), so a series that returns after a gap is counted from where it was.

    Tombstones last seen before ``prune_before_ms`` are dropped; of the rest at most
    ``max_tombstones`` are kept, the most recently seen first (None: no cap). The caller
    must choose ``prune_before_ms`` so that a pruned series can no longer be returned by a
    query, or accept that it then counts as new (see the cycle's bounds).
    """
    gone = [
        (sid, point)
        for sid, point in previous.items()
        if point.seen_ms >= prune_before_ms and sid not in current
    ]
    if max_tombstones is not None and len(gone) > max_tombstones:
        gone.sort(key=lambda item: (-item[1].seen_ms, item[0]))
        del gone[max_tombstones:]
    result = dict(gone)
    result.update(current)
    return result


def encode(points: Mapping[str, SeriesPoint]) -> dict[str, list[int]]:
    """JSON form: ``{series_id: [value, ..., seen_ms]}``."""
    return {sid: [*p.values, p.seen_ms] for sid, p in sorted(points.items())}


def decode(data: Mapping[str, Any] | None, arity: int) -> dict[str, SeriesPoint]:
    """Inverse of :func:`encode`; entries of another arity are refused."""
    result: dict[str, SeriesPoint] = {}
    for sid, raw in (data or {}).items():
        if not isinstance(raw, list) or len(raw) != arity + 1:
            raise ValueError(f"checkpoint series {sid!r}: expected {arity + 1} integers")
        ints = [int(x) for x in raw]
        result[str(sid)] = SeriesPoint(tuple(ints[:arity]), ints[arity])
    return result
