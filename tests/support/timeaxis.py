"""A Prometheus with a time axis, for time-travel tests that run simulated months in seconds.

Four parts::

    store = SeriesStore()
    scraper = Scraper(store, start=T0)                        # 15 s scrape interval
    node = GpuExporter("node-1", started=T0, instance="exp-1")
    node.allocate(namespace="team-a", pod="train-0", pod_uid="u1", gpu_uuid="GPU-1",
                  gpu_model="NVIDIA H100 80GB HBM3", start=T0, utilisation="0.8")
    scraper.add(node, labels={"job": "kubemeter-exporter", "instance": "10.0.0.1:9400"})
    scraper.advance_to(T0 + timedelta(days=31))               # one sample per series per scrape
    prom = FakePrometheus(store)                              # MeteringCycle(ledger, prom, ...)
    truth = store.increase(ALLOCATED, period.start, period.end)   # the oracle

* :class:`SeriesStore` holds raw samples per series (metric name + label set) at simulated
  timestamps with millisecond precision, appended in time order. Label values that are empty
  are dropped on append, as Prometheus drops them at ingestion (so ``mig_profile=""`` of a
  whole GPU is stored as no ``mig_profile`` label, and a ``mig_profile=""`` matcher matches it).
* :class:`FakePrometheus` answers exactly the one query form the metering cycle issues,
  ``last_over_time(<metric>{<name>="<value>",...}[<N>ms])`` evaluated at ``at``, with
  Prometheus 3 semantics: the range is left-open, right-closed ``(at - N ms, at]``; a series
  with no sample in it is absent; the value is the series' last sample; labels exclude
  ``__name__``. ``at`` is rounded to the millisecond, as the real client's ``time=%.3f`` and
  Prometheus' parsing do. ``left_open=False`` gives Prometheus 2 semantics (``[at - N, at]``,
  both ends closed), which is what a Prometheus 2.x server answers (the Debian package the
  integration tests run is 2.42). It satisfies :class:`kubemeter_operator.metering.cycle.
  Prometheus` structurally and, when ``down``, raises what the real client raises when
  Prometheus is unreachable (``PrometheusUnavailableError`` where ``errors`` has it, else
  :class:`~kubemeter_operator.errors.TransientError`; a TransientError either way).
* Simulated scrape targets that compute their counters as pure functions of time (integer
  arithmetic; no wall clock, no randomness): :class:`GpuExporter` (one node's kubemeter
  exporter: allocated and active milliseconds per pod and device, a new ``exporter_instance``
  from 0 on restart) and :class:`TokenServer` (a vLLM-style server: prompt and generation token
  counters at piecewise-constant rates, reset in place on restart). :class:`Scraper` appends
  one sample per series and scrape up to a time, with per-target offsets, target labels
  (``honor_labels: true``: the target's own labels win) and scrape gaps.
* Ground truth for oracles, computed from the stored samples without the operator's code:
  :meth:`SeriesStore.value_at`, :meth:`SeriesStore.values_at`, :meth:`SeriesStore.increase`,
  :meth:`SeriesStore.windowed_increase` and :func:`group_sum`.

Limits (what the fake never does; a test that needs it needs a real Prometheus, see
``support.backfill``):

* Any other query (another function, ``rate``/``increase``, a range in another unit, an
  ``offset``/``@`` modifier, a regex or negative matcher) raises :class:`UnsupportedQueryError`, a
  plain ``Exception`` rather than a KubemeterError, so the cycle's per-source error handling
  does not swallow it as a degraded source. :class:`~kubemeter_operator.metering.loop.
  MeteringLoop` logs and survives any exception, so refusals are also recorded in
  :attr:`FakePrometheus.refused`; a test driving the loop should assert it is empty.
* No staleness markers (``last_over_time`` skips them in Prometheus anyway), no lookback delta,
  no out-of-order or duplicate-timestamp ingestion (refused), no retention (nothing is dropped),
  no ``job``/``instance`` labels unless a test adds them as target labels.
* Values are doubles, as in Prometheus; the simulated counters are integers below 2**53, so
  they are exact.
"""

from __future__ import annotations

import itertools
import math
import re
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Protocol

from kubemeter_exporter import contract
from kubemeter_operator import errors
from kubemeter_operator.errors import InputError, TransientError
from kubemeter_operator.metering.prometheus import Sample

__all__ = [
    "ACTIVE",
    "ALLOCATED",
    "VLLM_GENERATION",
    "VLLM_PROMPT",
    "FakePrometheus",
    "GpuAllocation",
    "GpuExporter",
    "Instant",
    "LabelSet",
    "ParsedQuery",
    "Rate",
    "Scraped",
    "Scraper",
    "Series",
    "SeriesKey",
    "SeriesStore",
    "Target",
    "TokenServer",
    "UnsupportedQueryError",
    "from_ms",
    "group_sum",
    "label_set",
    "parse_query",
    "series_key",
    "to_ms",
]

ALLOCATED = contract.GPU_ALLOCATED_MS.name
ACTIVE = contract.GPU_ACTIVE_MS.name
VLLM_PROMPT = "vllm:prompt_tokens_total"
VLLM_GENERATION = "vllm:generation_tokens_total"

Instant = datetime | int
"""An aware datetime, or epoch milliseconds."""
LabelSet = tuple[tuple[str, str], ...]
"""Label pairs sorted by name, without ``__name__`` and without empty values."""
Rate = Fraction | int | float | str
"""Per second; converted exactly with :class:`fractions.Fraction` (``"123.4"`` is exact)."""

_UNAVAILABLE: type[TransientError] = getattr(errors, "PrometheusUnavailableError", TransientError)
"""What the real client raises when Prometheus cannot be queried (a TransientError)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# ---------------------------------------------------------------- time


def to_ms(t: Instant) -> int:
    """Epoch milliseconds of ``t`` (an int is taken as epoch ms already).

    Refuses naive datetimes and sub-millisecond precision (Prometheus keeps milliseconds;
    rounding silently would move samples).
    """
    if isinstance(t, int):
        return t
    if t.tzinfo is None:
        raise ValueError(f"{t!r}: timestamps must carry a time zone")
    us = (t - _EPOCH) // _US
    if us % 1000:
        raise ValueError(f"{t.isoformat()}: finer than a millisecond")
    return us // 1000


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds ``ms``."""
    return _EPOCH + timedelta(milliseconds=ms)


def _duration_ms(d: timedelta) -> int:
    us = d // _US
    if us % 1000:
        raise ValueError(f"{d}: finer than a millisecond")
    return us // 1000


def _query_ms(at: datetime) -> int:
    """``at`` rounded to the millisecond, as ``time=%.3f`` and Prometheus' parser do."""
    if at.tzinfo is None:
        raise InputError("at", "must carry a time zone")
    return ((at - _EPOCH) // _US + 500) // 1000


# ---------------------------------------------------------------- series


def label_set(labels: Mapping[str, str]) -> LabelSet:
    """Validated, sorted label pairs; empty values are dropped (as Prometheus does)."""
    for name, value in labels.items():
        if name == "__name__" or not _LABEL_RE.match(name):
            raise ValueError(f"{name!r} is not a valid label name here")
        if not isinstance(value, str):
            raise TypeError(f"label {name}: value {value!r} is not a string")
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One series: a metric name and its label set."""

    metric: str
    labels: LabelSet

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def series_key(metric: str, labels: Mapping[str, str]) -> SeriesKey:
    """The key of ``metric{labels}`` (validated; empty label values dropped)."""
    if not _METRIC_RE.match(metric):
        raise ValueError(f"{metric!r} is not a valid metric name")
    return SeriesKey(metric, label_set(labels))


class Series:
    """The samples of one series: strictly increasing timestamps (epoch ms) and values."""

    __slots__ = ("key", "times", "values")

    def __init__(self, key: SeriesKey) -> None:
        self.key = key
        self.times: array[int] = array("q")
        self.values: array[float] = array("d")

    def __len__(self) -> int:
        return len(self.times)

    def append(self, t_ms: int, value: float) -> None:
        if self.times and t_ms <= self.times[-1]:
            raise ValueError(
                f"{self.key.metric}{dict(self.key.labels)}: sample at {t_ms} ms is not after "
                f"the last one at {self.times[-1]} ms (out of order or duplicate)"
            )
        self.times.append(t_ms)
        self.values.append(float(value))

    def last_index(self, t_ms: int) -> int:
        """Index of the last sample at or before ``t_ms``; -1 when there is none."""
        return bisect_right(self.times, t_ms) - 1

    def value_at(self, t_ms: int) -> float | None:
        """The value of the last sample at or before ``t_ms`` (no range limit)."""
        i = self.last_index(t_ms)
        return self.values[i] if i >= 0 else None

    def samples(self) -> Iterator[tuple[int, float]]:
        return zip(self.times, self.values, strict=True)


def _matches(labels: LabelSet, matchers: Sequence[tuple[str, str]]) -> bool:
    d = dict(labels)
    return all(d.get(name, "") == value for name, value in matchers)


def group_sum(values: Mapping[LabelSet, float], by: Sequence[str]) -> dict[tuple[str, ...], float]:
    """``sum by (by) (values)``: totals per tuple of the ``by`` labels (missing ones are "")."""
    out: dict[tuple[str, ...], float] = {}
    for labels, v in values.items():
        d = dict(labels)
        k = tuple(d.get(name, "") for name in by)
        out[k] = out.get(k, 0.0) + v
    return out


class SeriesStore:
    """Raw samples per series, with ground-truth queries for test oracles."""

    def __init__(self) -> None:
        self._by_metric: dict[str, dict[LabelSet, Series]] = {}

    # -- writing ----------------------------------------------------------------------

    def append(self, metric: str, labels: Mapping[str, str], at: Instant, value: float) -> None:
        """Append one sample; it must be later than the series' last sample."""
        self.append_key(series_key(metric, labels), to_ms(at), value)

    def append_key(self, key: SeriesKey, t_ms: int, value: float) -> None:
        """Fast path of :meth:`append` for a prebuilt key."""
        by_labels = self._by_metric.setdefault(key.metric, {})
        series = by_labels.get(key.labels)
        if series is None:
            series = by_labels[key.labels] = Series(key)
        series.append(t_ms, value)

    # -- reading ----------------------------------------------------------------------

    def metrics(self) -> list[str]:
        return sorted(self._by_metric)

    def series(self, metric: str | None = None) -> list[Series]:
        """Every series (of ``metric``), sorted by metric name and labels."""
        names = [metric] if metric is not None else self.metrics()
        out: list[Series] = []
        for name in names:
            by_labels = self._by_metric.get(name, {})
            out.extend(by_labels[k] for k in sorted(by_labels))
        return out

    def get(self, metric: str, labels: Mapping[str, str]) -> Series | None:
        key = series_key(metric, labels)
        return self._by_metric.get(key.metric, {}).get(key.labels)

    def select(self, metric: str, matchers: Sequence[tuple[str, str]] = ()) -> list[Series]:
        """Series of ``metric`` whose labels equal every ``(name, value)`` (absent = "")."""
        return [s for s in self.series(metric) if _matches(s.key.labels, matchers)]

    @property
    def sample_count(self) -> int:
        return sum(len(s) for by in self._by_metric.values() for s in by.values())

    def time_range(self) -> tuple[int, int] | None:
        """(first, last) sample timestamp over all series, epoch ms; None when empty."""
        all_series = self.series()
        if not any(all_series):
            return None
        return (
            min(s.times[0] for s in all_series if s),
            max(s.times[-1] for s in all_series if s),
        )

    # -- ground truth -------------------------------------------------------------------

    def value_at(self, metric: str, labels: Mapping[str, str], at: Instant) -> float | None:
        """The series' value at its last sample at or before ``at`` (no range limit)."""
        s = self.get(metric, labels)
        return s.value_at(to_ms(at)) if s is not None else None

    def values_at(
        self, metric: str, at: Instant, matchers: Mapping[str, str] | None = None
    ) -> dict[LabelSet, float]:
        """Per series of ``metric``: the value at its last sample at or before ``at``
        (series with no such sample are left out)."""
        t = to_ms(at)
        out: dict[LabelSet, float] = {}
        for s in self.select(metric, sorted((matchers or {}).items())):
            v = s.value_at(t)
            if v is not None:
                out[s.key.labels] = v
        return out

    def increase(
        self,
        metric: str,
        start: Instant,
        end: Instant,
        matchers: Mapping[str, str] | None = None,
    ) -> dict[LabelSet, float]:
        """Per series: value at the last sample <= ``end`` minus value at the last sample <=
        ``start`` (0 when it has none), as metering windows ending at ``start`` and ``end``
        read it. Every series with a sample <= ``end`` is listed, increase 0 included.

        Exact for counters that never reset in place (the exporter's: a restart is a new
        series); for those that do (a vLLM restart) use :meth:`windowed_increase`.
        """
        t0, t1 = to_ms(start), to_ms(end)
        if t1 < t0:
            raise ValueError("end before start")
        out: dict[LabelSet, float] = {}
        for s in self.select(metric, sorted((matchers or {}).items())):
            v1 = s.value_at(t1)
            if v1 is not None:
                out[s.key.labels] = v1 - (s.value_at(t0) or 0.0)
        return out

    def windowed_increase(
        self,
        metric: str,
        instants: Iterable[Instant],
        matchers: Mapping[str, str] | None = None,
    ) -> dict[LabelSet, float]:
        """Per series: the sum over consecutive ``instants`` (window ends, increasing) of what
        a reader of the last value at each end counts, with the counter-reset rule of
        ``metering.deltas`` (a value below the previous one counts as itself).

        The baseline is the value at ``instants[0]`` (0 when the series has no sample by
        then), so pass an instant before the first sample to count a series from 0. A series
        with no sample at or before an instant keeps its previous value.
        """
        ts = [to_ms(t) for t in instants]
        if not ts:
            raise ValueError("no instants")
        if any(b <= a for a, b in itertools.pairwise(ts)):
            raise ValueError("instants must increase")
        out: dict[LabelSet, float] = {}
        for s in self.select(metric, sorted((matchers or {}).items())):
            if s.last_index(ts[-1]) < 0:
                continue
            previous = s.value_at(ts[0]) or 0.0
            total = 0.0
            for t in ts[1:]:
                v = s.value_at(t)
                if v is None:
                    continue
                total += v if v < previous else v - previous
                previous = v
            out[s.key.labels] = total
        return out


# ---------------------------------------------------------------- the fake server


class UnsupportedQueryError(Exception):
    """A query outside the one form the fake implements (deliberately not a KubemeterError)."""


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """``last_over_time(<metric>{<matchers>}[<range_ms>ms])``."""

    metric: str
    matchers: tuple[tuple[str, str], ...]
    range_ms: int


_QUERY_RE = re.compile(
    r"last_over_time\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<matchers>.*)\})?\[(?P<range>[1-9][0-9]*)ms\]\)",
    re.DOTALL,
)
_MATCHER_RE = re.compile(
    r'(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"', re.DOTALL
)
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(promql: str, raw: str) -> str:
    def one(m: re.Match[str]) -> str:
        try:
            return _ESCAPES[m.group(0)]
        except KeyError:
            raise UnsupportedQueryError(
                f"{promql!r}: escape {m.group(0)!r} not supported"
            ) from None

    return re.sub(r"\\.", one, raw, flags=re.DOTALL)


def parse_query(promql: str) -> ParsedQuery:
    """Parse the only supported form (as ``metering.prometheus.last_value_query`` writes
    it); anything else raises :class:`UnsupportedQueryError`."""
    m = _QUERY_RE.fullmatch(promql)
    if m is None:
        raise UnsupportedQueryError(
            f'the time-axis fake answers only last_over_time(<metric>{{<label>="<value>",...}}'
            f"[<N>ms]), not {promql!r}"
        )
    matchers: list[tuple[str, str]] = []
    body = m.group("matchers") or ""
    pos = 0
    while pos < len(body):
        mm = _MATCHER_RE.match(body, pos)
        if mm is None:
            raise UnsupportedQueryError(f'{promql!r}: only label="value" matchers are supported')
        matchers.append((mm.group("name"), _unescape(promql, mm.group("value"))))
        pos = mm.end()
        if pos < len(body):
            if body[pos] != ",":
                raise UnsupportedQueryError(f"{promql!r}: matchers must be separated by commas")
            pos += 1
            if pos == len(body):
                raise UnsupportedQueryError(f"{promql!r}: trailing comma")
    return ParsedQuery(m.group("metric"), tuple(matchers), int(m.group("range")))


@dataclass
class FakePrometheus:
    """Answers ``last_over_time(selector[Nms])`` at ``at`` from a :class:`SeriesStore`.

    ``down``: every query raises TransientError (Prometheus unreachable). ``failing_metrics``:
    queries of these metrics raise TransientError (one source down). Every query is counted in
    ``queries`` (the last 100 kept in ``recent``); refused ones are listed in ``refused``.
    """

    store: SeriesStore = field(default_factory=SeriesStore)
    left_open: bool = True
    """Prometheus 3 (``(at - N, at]``); False: Prometheus 2 (``[at - N, at]``)."""
    url: str = "http://fake-prometheus:9090"
    down: bool = False
    failing_metrics: set[str] = field(default_factory=set)
    queries: int = 0
    recent: deque[tuple[str, datetime]] = field(default_factory=lambda: deque(maxlen=100))
    refused: list[str] = field(default_factory=list)

    def query(self, promql: str, at: datetime) -> list[Sample]:
        """Evaluate ``promql`` at ``at``: an instant vector sorted by labels."""
        self.queries += 1
        self.recent.append((promql, at))
        try:
            q = parse_query(promql)
        except UnsupportedQueryError:
            self.refused.append(promql)
            raise
        t = _query_ms(at)
        if self.down:
            raise _UNAVAILABLE(f"prometheus {self.url} unreachable: down (simulated)")
        if q.metric in self.failing_metrics:
            raise _UNAVAILABLE(f"prometheus {self.url}: HTTP 503: {q.metric} failing (simulated)")
        lo = t - q.range_ms
        out: list[Sample] = []
        for s in self.store.select(q.metric, q.matchers):
            i = s.last_index(t)
            if i < 0:
                continue
            ts = s.times[i]
            if ts < lo or (self.left_open and ts == lo):
                continue
            v = s.values[i]
            if math.isfinite(v):  # the real client drops NaN and infinities
                out.append(Sample(s.key.label_dict, v))
        return out

    def healthy(self) -> bool:
        return not self.down


# ---------------------------------------------------------------- simulated targets

Scraped = tuple[SeriesKey, float]
"""One series' value at a scrape."""


class Target(Protocol):
    """Something a :class:`Scraper` scrapes: the series it exposes at ``t_ms``."""

    def scrape(self, t_ms: int) -> Iterable[Scraped]: ...


def _fraction(x: Rate) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)


class _Timeline:
    """Guards that a target is not changed where it was already scraped."""

    def __init__(self) -> None:
        self.scraped_ms: int | None = None

    def check(self, what: str, t_ms: int) -> None:
        if self.scraped_ms is not None and t_ms <= self.scraped_ms:
            raise ValueError(
                f"{what} at {from_ms(t_ms).isoformat()}: already scraped up to "
                f"{from_ms(self.scraped_ms).isoformat()}"
            )

    def seen(self, t_ms: int) -> None:
        if self.scraped_ms is None or t_ms > self.scraped_ms:
            self.scraped_ms = t_ms


@dataclass(eq=False)
class GpuAllocation:
    """A pod holding one GPU or MIG instance over ``[start_ms, stop_ms)``."""

    namespace: str
    pod: str
    pod_uid: str
    gpu_uuid: str
    gpu_model: str
    mig_profile: str
    start_ms: int
    stop_ms: int | None
    utilisation: Fraction
    """Share of the allocated time that is active (0..1)."""
    linger_ms: int
    """How long the exporter keeps serving the (flat) series after ``stop_ms``."""


class GpuExporter:
    """One node's kubemeter exporter: a :class:`Target` with the contract's GPU counters.

    Per allocation and exporter instance: ``allocated_ms(t) = max(0, min(t, stop) -
    max(start, instance start))`` and ``active_ms(t) = floor(allocated_ms(t) * utilisation)``
    (integers; ``active <= allocated``; both monotonic). A series is served from the
    allocation's start (or the instance's start) until ``stop + linger`` (exclusive);
    ``linger=0``: a stopped pod's series have no more samples. :meth:`restart` starts a new
    ``exporter_instance`` whose series begin at 0 and that knows no pod released before it.
    """

    def __init__(self, node: str, *, started: Instant, instance: str = "exporter-1") -> None:
        self.node = node
        self._instances: list[tuple[int, str]] = [(to_ms(started), instance)]
        self.allocations: list[GpuAllocation] = []
        self._timeline = _Timeline()
        self._keys: dict[tuple[int, str], tuple[SeriesKey, SeriesKey]] = {}

    @property
    def instances(self) -> list[tuple[datetime, str]]:
        """(start, exporter_instance) of every instance, in order."""
        return [(from_ms(t), i) for t, i in self._instances]

    def allocate(
        self,
        *,
        namespace: str,
        pod: str,
        pod_uid: str,
        gpu_uuid: str,
        gpu_model: str,
        start: Instant,
        stop: Instant | None = None,
        utilisation: Rate = 1,
        mig_profile: str = "",
        linger: timedelta = timedelta(0),
    ) -> GpuAllocation:
        """A pod starts holding a device at ``start`` (until ``stop``, or :meth:`release`)."""
        start_ms = to_ms(start)
        stop_ms = to_ms(stop) if stop is not None else None
        util = _fraction(utilisation)
        if not 0 <= util <= 1:
            raise ValueError(f"utilisation {utilisation} is not within 0..1")
        if stop_ms is not None and stop_ms <= start_ms:
            raise ValueError("stop must be after start")
        linger_ms = _duration_ms(linger)
        if linger_ms < 0:
            raise ValueError("linger cannot be negative")
        self._timeline.check("allocate", start_ms)
        for a in self.allocations:
            if (a.namespace, a.pod, a.pod_uid, a.gpu_uuid) == (namespace, pod, pod_uid, gpu_uuid):
                raise ValueError(f"{namespace}/{pod} already has an allocation of {gpu_uuid}")
        alloc = GpuAllocation(
            namespace,
            pod,
            pod_uid,
            gpu_uuid,
            gpu_model,
            mig_profile,
            start_ms,
            stop_ms,
            util,
            linger_ms,
        )
        self.allocations.append(alloc)
        return alloc

    def release(self, allocation: GpuAllocation, at: Instant) -> None:
        """The pod stops holding the device at ``at``."""
        t = to_ms(at)
        self._timeline.check("release", t)
        if allocation.stop_ms is not None:
            raise ValueError("already released")
        if t <= allocation.start_ms:
            raise ValueError("release must be after the start")
        allocation.stop_ms = t

    def restart(self, at: Instant, instance: str) -> None:
        """The exporter restarts at ``at`` as ``instance``: new series, counters from 0."""
        t = to_ms(at)
        self._timeline.check("restart", t)
        if t <= self._instances[-1][0]:
            raise ValueError("restarts must be in time order")
        if instance in {i for _, i in self._instances}:
            raise ValueError(f"exporter_instance {instance!r} was used before")
        self._instances.append((t, instance))

    def instance_at(self, t_ms: int) -> tuple[int, str] | None:
        """(start ms, id) of the instance running at ``t_ms``; None before the first."""
        i = bisect_right([s for s, _ in self._instances], t_ms) - 1
        return self._instances[i] if i >= 0 else None

    def counters(self, allocation: GpuAllocation, t_ms: int) -> tuple[int, int] | None:
        """(allocated_ms, active_ms) the exporter holds at ``t_ms`` whether scraped or not;
        None when it serves no such series then."""
        inst = self.instance_at(t_ms)
        if inst is None:
            return None
        a = allocation
        begin = max(a.start_ms, inst[0])
        if t_ms < a.start_ms:
            return None
        if a.stop_ms is not None and (t_ms >= a.stop_ms + a.linger_ms or a.stop_ms <= inst[0]):
            return None
        end = t_ms if a.stop_ms is None else min(t_ms, a.stop_ms)
        allocated = max(0, end - begin)
        active = allocated * a.utilisation.numerator // a.utilisation.denominator
        return allocated, active

    def _key_pair(self, a: GpuAllocation, instance: str) -> tuple[SeriesKey, SeriesKey]:
        k = (id(a), instance)
        pair = self._keys.get(k)
        if pair is None:
            labels = {
                contract.LABEL_NODE: self.node,
                contract.LABEL_GPU_UUID: a.gpu_uuid,
                contract.LABEL_GPU_MODEL: a.gpu_model,
                contract.LABEL_MIG_PROFILE: a.mig_profile,
                contract.LABEL_NAMESPACE: a.namespace,
                contract.LABEL_POD: a.pod,
                contract.LABEL_POD_UID: a.pod_uid,
                contract.LABEL_EXPORTER_INSTANCE: instance,
            }
            assert set(labels) == set(contract.COUNTER_LABELS)
            pair = self._keys[k] = (series_key(ALLOCATED, labels), series_key(ACTIVE, labels))
        return pair

    def scrape(self, t_ms: int) -> list[Scraped]:
        self._timeline.seen(t_ms)
        inst = self.instance_at(t_ms)
        if inst is None:
            return []
        out: list[Scraped] = []
        for a in self.allocations:
            values = self.counters(a, t_ms)
            if values is None:
                continue
            k_alloc, k_active = self._key_pair(a, inst[1])
            out.append((k_alloc, values[0]))
            out.append((k_active, values[1]))
        return out


class TokenServer:
    """A vLLM-style inference server: a :class:`Target` with token counters per model.

    Each counter grows at a piecewise-constant rate per second (:meth:`set_rate`), its value
    at ``t`` being ``floor(sum of rate x elapsed ms / 1000)`` since the last (re)start
    (integers, monotonic between restarts). Series carry ``namespace``, ``pod``, the model in
    ``model_label`` and ``extra_labels``. :meth:`restart` resets every counter to 0 in place
    (same labels); :meth:`stop`: no more samples from then on.
    """

    def __init__(
        self,
        *,
        namespace: str,
        pod: str,
        model: str,
        started: Instant,
        prompt_per_s: Rate = 0,
        generation_per_s: Rate = 0,
        extra_rates: Mapping[str, Rate] | None = None,
        model_label: str = "model_name",
        prompt_metric: str = VLLM_PROMPT,
        generation_metric: str = VLLM_GENERATION,
        extra_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.prompt_metric = prompt_metric
        self.generation_metric = generation_metric
        t0 = to_ms(started)
        rates = {prompt_metric: prompt_per_s, generation_metric: generation_per_s}
        rates.update(extra_rates or {})
        self.labels = {
            **(extra_labels or {}),
            "namespace": namespace,
            "pod": pod,
            model_label: model,
        }
        self._keys = {m: series_key(m, self.labels) for m in rates}
        self._starts: list[int] = [t0]
        self._stop_ms: int | None = None
        self._segments: dict[str, list[tuple[int, Fraction]]] = {
            m: [(t0, _fraction(r))] for m, r in rates.items()
        }
        for m, segs in self._segments.items():
            if segs[0][1] < 0:
                raise ValueError(f"{m}: negative rate")
        self._timeline = _Timeline()

    @property
    def metrics(self) -> list[str]:
        return sorted(self._keys)

    def set_rate(self, at: Instant, metric: str, per_s: Rate) -> None:
        """From ``at`` on, ``metric`` grows at ``per_s`` per second."""
        t = to_ms(at)
        self._timeline.check("set_rate", t)
        segs = self._segments[metric]
        rate = _fraction(per_s)
        if rate < 0:
            raise ValueError("negative rate")
        if t < segs[-1][0]:
            raise ValueError("rate changes must be in time order")
        if t == segs[-1][0]:
            segs[-1] = (t, rate)
        else:
            segs.append((t, rate))

    def restart(self, at: Instant) -> None:
        """The server restarts at ``at``: every counter starts again from 0."""
        t = to_ms(at)
        self._timeline.check("restart", t)
        if t <= self._starts[-1]:
            raise ValueError("restarts must be in time order")
        self._starts.append(t)

    def stop(self, at: Instant) -> None:
        """The pod is gone from ``at`` on: no more samples."""
        t = to_ms(at)
        self._timeline.check("stop", t)
        if self._stop_ms is not None or t <= self._starts[0]:
            raise ValueError("stop once, after the start")
        self._stop_ms = t

    def value(self, metric: str, t_ms: int) -> int | None:
        """The counter at ``t_ms`` whether scraped or not; None when not served then."""
        if t_ms < self._starts[0] or (self._stop_ms is not None and t_ms >= self._stop_ms):
            return None
        since = self._starts[bisect_right(self._starts, t_ms) - 1]
        segs = self._segments[metric]
        total = Fraction(0)
        for i, (seg_start, rate) in enumerate(segs):
            seg_end = segs[i + 1][0] if i + 1 < len(segs) else t_ms
            lo, hi = max(seg_start, since), min(seg_end, t_ms)
            if hi > lo:
                total += rate * (hi - lo)
        return math.floor(total / 1000)

    def scrape(self, t_ms: int) -> list[Scraped]:
        self._timeline.seen(t_ms)
        out: list[Scraped] = []
        for metric, key in self._keys.items():
            v = self.value(metric, t_ms)
            if v is not None:
                out.append((key, v))
        return out


@dataclass(eq=False)
class _Scrape:
    target: Target
    offset_ms: int
    labels: LabelSet
    next_k: int
    rekeyed: dict[SeriesKey, SeriesKey] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)


class Scraper:
    """Scrapes targets into a :class:`SeriesStore` as Prometheus would, on simulated time.

    Target ``i`` is scraped at ``start + offset_i + k * interval`` (k >= 0); every series it
    exposes then gets one sample at that timestamp. Target labels are added to its series
    unless the series already has the label (``honor_labels: true``). A gap ``[a, b)``
    (Prometheus down, or one target unreachable) skips the scrapes in it: the counters keep
    growing, and the first scrape after the gap shows the full value.
    """

    def __init__(
        self,
        store: SeriesStore,
        *,
        start: Instant,
        interval: timedelta = timedelta(seconds=15),
    ) -> None:
        self.store = store
        self.start_ms = to_ms(start)
        self.interval_ms = _duration_ms(interval)
        if self.interval_ms <= 0:
            raise ValueError("interval must be positive")
        self._now_ms: int | None = None
        self._scrapes: list[_Scrape] = []
        self._gaps: list[tuple[int, int]] = []

    @property
    def now(self) -> datetime | None:
        """The time scraped up to (None before the first :meth:`advance_to`)."""
        return from_ms(self._now_ms) if self._now_ms is not None else None

    def add(
        self,
        target: Target,
        *,
        offset: timedelta = timedelta(0),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Scrape ``target`` from its next scrape time after :attr:`now` on."""
        offset_ms = _duration_ms(offset)
        if not 0 <= offset_ms < self.interval_ms:
            raise ValueError("offset must be within [0, interval)")
        if any(s.target is target for s in self._scrapes):
            raise ValueError("target already added")
        k = 0
        if self._now_ms is not None:
            k = max(0, (self._now_ms - self.start_ms - offset_ms) // self.interval_ms + 1)
        self._scrapes.append(_Scrape(target, offset_ms, label_set(labels or {}), k))

    def gap(self, start: Instant, end: Instant, target: Target | None = None) -> None:
        """No scrapes at times in ``[start, end)`` (of ``target`` only, or of every target)."""
        a, b = to_ms(start), to_ms(end)
        if b <= a:
            raise ValueError("a gap must end after it starts")
        if self._now_ms is not None and a <= self._now_ms:
            raise ValueError("a gap cannot start where samples were already written")
        if target is None:
            self._gaps.append((a, b))
            return
        for s in self._scrapes:
            if s.target is target:
                s.gaps.append((a, b))
                return
        raise ValueError("unknown target (add it first)")

    def scrape_times(self, target: Target, start: Instant, end: Instant) -> list[int]:
        """Scrape times of ``target`` in ``[start, end]`` (gaps not applied)."""
        s = next((s for s in self._scrapes if s.target is target), None)
        if s is None:
            raise ValueError("unknown target")
        a, b = to_ms(start), to_ms(end)
        base = self.start_ms + s.offset_ms
        k = max(0, -((base - a) // self.interval_ms))
        out: list[int] = []
        while (t := base + k * self.interval_ms) <= b:
            out.append(t)
            k += 1
        return out

    def _key(self, s: _Scrape, key: SeriesKey) -> SeriesKey:
        if not s.labels:
            return key
        new = s.rekeyed.get(key)
        if new is None:
            merged = dict(s.labels)
            merged.update(key.labels)  # honor_labels: the target's own labels win
            new = s.rekeyed[key] = SeriesKey(key.metric, tuple(sorted(merged.items())))
        return new

    def advance_to(self, t: Instant) -> int:
        """Scrape every target at each of its scrape times up to ``t`` (inclusive) that lies
        in no gap; returns the number of samples written."""
        end = to_ms(t)
        if self._now_ms is not None and end < self._now_ms:
            raise ValueError("time only moves forward")
        written = 0
        for s in self._scrapes:
            gaps = sorted(self._gaps + s.gaps)
            base = self.start_ms + s.offset_ms
            while (ts := base + s.next_k * self.interval_ms) <= end:
                s.next_k += 1
                if any(a <= ts < b for a, b in gaps):
                    continue
                for key, value in s.target.scrape(ts):
                    self.store.append_key(self._key(s, key), ts, value)
                    written += 1
        self._now_ms = end
        return written
