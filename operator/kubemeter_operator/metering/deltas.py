"""Per-series counter deltas between a checkpoint and newly read values (pure).

* A series is identified by a stable id: a hash of its sorted label pairs (restricted to the
  identifying labels, so Prometheus target labels such as ``job`` do not change it).
* A series missing from the checkpoint starts from 0: counters are born at 0, and the
  exporter's ``exporter_instance`` label makes every restart a new series.
* A value below the checkpointed one is a counter reset: the new value is the delta (the
  Prometheus convention; should not happen with the exporter's counters).
* A series may carry several counters read together (GPU: allocated and active ms); a reset
  of any of them resets all of them.
* Series unseen for long are pruned from the checkpoint (see :func:`advance`).
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
    current: Mapping[str, Values],
    *,
    seen_ms: int,
    prune_before_ms: int,
) -> dict[str, SeriesPoint]:
    """The checkpoint after counting ``current``.

    Series read now take their new values and ``seen_ms``; series not read keep their old
    values until they were last seen before ``prune_before_ms``, when they are dropped. The
    caller must choose ``prune_before_ms`` so that a pruned series can no longer be returned
    by a query (its last sample is older than any later query's range).
    """
    result = {
        sid: point
        for sid, point in previous.items()
        if sid not in current and point.seen_ms >= prune_before_ms
    }
    for sid, values in current.items():
        result[sid] = SeriesPoint(values, seen_ms)
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
