"""One metering cycle: counter values at the window end -> per-tenant usage windows.

    cycle = MeteringCycle(ledger, PrometheusClient(url), pods, config, exporters=directory)
    result = cycle.run(tenants, plans)       # one window; result.behind: call again now

Each run:

1. loads the checkpoint (``ledger.get_checkpoint("metering")``): the last window end, the
   counted value of every series (live ones and tombstones) and the exporter targets
   verified earlier;
2. picks the next window ``[checkpoint time, T]`` (:func:`windows.next_window`: T on the
   step grid, trailing now by the lag; at most ``max_window``; never across a period end);
3. reads every counter's last raw value at T (``last_over_time(<counter>[span])``), so
   series that stopped inside the window still give their final value, and keeps only the
   samples that may count (:mod:`~kubemeter_operator.metering.trust`: the exporter's job, an
   exporter pod's address on the series' node, a valid value); the others are reported in
   ``CycleResult.untrusted`` and counted in metrics, never billed;
4. takes per-series deltas against the checkpoint, bounds each by physics (below), maps pods
   to tenants (:mod:`kubemeter_operator.usage.tenancy`; unowned usage goes to
   ``_unassigned``);
5. writes the usage windows, the quarantined deltas *and* the new checkpoint in one
   ``ledger.record_windows`` call (one transaction), guarded by compare-and-set on the
   checkpoint it started from.

Crash argument. A crash anywhere before step 5 commits nothing, and the next run recomputes
the same window from the same checkpoint (the same windows, the same quarantine rows: their
ids are digests of their window keys). Step 5 is one transaction: windows, rollups,
quarantine rows and checkpoint are all committed or none is, so a delta is never both billed
and held, and never counted twice: the checkpoint that moves past it commits with it. A
ConflictError (another replica committed since we read the checkpoint: the compare-and-set
failed; or a key reused with another payload) writes nothing; the cycle reloads the
checkpoint and tries again. Prometheus unreachable raises TransientError before anything is
written; the checkpoint stays, and the next successful run backfills the missed span window
by window. Replaying a committed window (a restored checkpoint) finds its windows and
quarantine rows already there with the same payloads: duplicates, no-ops.

Baselines: usage from before the metering start is not billed. On the very first window
(no checkpoint at all: a fresh ledger, or a ledger migrated in on a running fleet) every GPU
series' value is taken as its baseline and nothing is billed for it: the exporter's counters
from before kubemeter's ledger existed are not billed into the open period. Token sources
do the same the first time a source appears with series (a plan gains a Prometheus token
meter), so months of history in a long-running inference server's counters are not billed.

Bounds (physics). A delta of one series *covers* the span from ``since`` to the window end,
where ``since`` is the end of the window in which the series' counted value last changed
(``seen_ms`` of the checkpoint: a re-read of an unchanged value does not move it), or the
window start for a series new to the checkpoint. The counted value came from a sample that
was not there at the read before (else that read would have counted it), so it is at most
that read's span older than ``since`` (``span_ms``, kept in the checkpoint), or, when the
value changed further back, at most ``max_window + scrape_margin`` older; a new series had
no sample in the previous read's range, so it is at most ``scrape_margin`` older than the
window start. Every sample read now is at or before the window end. So the counter can have
grown for at most ``end - since + slack`` with that ``slack``, and the bounds are:

* GPU: allocated ms <= ``end - since + slack + gpu_tolerance`` (a pod holds a device for at
  most the wall time; active ms never exceed allocated ms, see below). In steady state
  (15 s windows, 2 min margin) that is 15 + 135 + 5 s per 15 s window: a guard against
  impossible deltas (hours of GPU time in a minute), not a precise meter;
* tokens: ``max_token_rate`` x ``(end - since + slack)`` per series.

For a new series the bound is the lookback span of the read (window + margin): its counter is
born at 0 with its exporter instance (or pod), and a series that had been alive longer
would have been seen by earlier windows. We do not use "since the first sight of the
exporter instance": that is a lower bound of the instance's age, not an upper one. A series
born during a scrape gap longer than the span, or one whose tombstone was evicted, therefore
fails the bound and is quarantined rather than billed: an admin can release it. A bound of
None (the defaults of ``gpu_tolerance`` and ``max_token_rate``) turns the check off:
simulations that run an exporter faster than real time need that; the operator always sets
both. A delta over its bound is *quarantined*: the record it would have been (same
tenant, source, series and window) is written to the ledger's quarantine table in the same
transaction, never billed, listed in ``CycleResult.quarantined`` and counted in a metric;
``kubemeter quarantine release`` records it later as that very window. The checkpoint moves
past it, so it is neither quarantined again nor billed later. A bad series never fails the
cycle for the others.

Gaps and tombstones. A series that is not read any more stays in the checkpoint as a
tombstone (its last counted values and ``seen_ms``) for ``tombstone_retention`` (default 15
days, >= Prometheus' retention), at most ``max_tombstones`` of them per source (the most
recently seen kept; each costs ~45 bytes of checkpoint JSON, 2.3 MB at the default cap of
50,000). When it returns, only its increase since the last counted value is billed, and a GPU
record covers ``[since, window end]``: a span longer than the window, which the ledger splits
exactly by UTC day and period (a part in a finalised period is booked as late usage on the
next open statement). Such a record cannot collide with another window of the series: its
start is the end of the series' last window with a change, and no window of the series
starts there (it did not change in it). A new ``exporter_instance`` (an exporter restart) is
a new series and starts from 0.

Checkpoint (JSON, ledger checkpoint ``metering``)::

    {"version": 1,
     "time": "2026-11-30T12:00:15Z",               # end of the last committed window
     "gpu": {"<series id>": [allocated_ms, active_ms, seen_ms], ...},
     "tokens": {"<source key>": {"<series id>": [value, seen_ms], ...}, ...},
     "span_ms": 135000,                            # query range of that window's read
     "exporters": {"<instance>": ["<node>", seen_ms], ...}}   # with an exporter directory

``seen_ms`` is the window end (epoch ms) at which the series' counted value last changed.
The stored values are what has been *counted* (active ms above allocated ms in one window is
carried to the next, so ``active <= allocated`` holds per record without losing anything).
``exporters`` remembers the exporter targets (``instance`` -> node) that produced trusted
series, for ``tombstone_retention``: a new operator process still trusts the last samples of
exporter pods that were replaced while it was not running. The version stays 1: a checkpoint
of an older operator loads as is (it simply has fewer tombstones and no ``exporters``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, Protocol

from pydantic import ValidationError

from kubemeter_operator.api.priceplan import MeterKind, PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.types import MIG_PROFILE_RE
from kubemeter_operator.api.usage import GpuUsage, TokenUsage, UsageRecord
from kubemeter_operator.errors import ConflictError, KubemeterError, TransientError
from kubemeter_operator.ledger import MeteringCommit, QuarantineEntry, RecordResult, UsageWindow
from kubemeter_operator.metering import deltas as dl
from kubemeter_operator.metering import sources as src
from kubemeter_operator.metering import trust
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodDirectory, PodMeta
from kubemeter_operator.metering.prometheus import Sample, last_value_query
from kubemeter_operator.metering.trust import UntrustedSeries
from kubemeter_operator.metering.windows import Window, from_ms, next_window, to_ms
from kubemeter_operator.usage.tenancy import UNASSIGNED, NamespaceConflict, TenancyMap

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "metering"
CHECKPOINT_VERSION = 1
_CONFLICT_RETRIES = 3
_MS = timedelta(milliseconds=1)
MAX_REPORTED = 1000
"""Untrusted series listed in one CycleResult (the metrics count all of them)."""
MAX_EXPORTERS = 10_000
"""Exporter targets remembered in the checkpoint (the most recently seen kept)."""


class Ledger(Protocol):
    """What the cycle needs from :class:`kubemeter_operator.ledger.Ledger`."""

    def get_checkpoint(self, name: str) -> dict[str, Any] | None: ...

    def record_metering(self, commit: MeteringCommit) -> RecordResult: ...


class Prometheus(Protocol):
    """What the cycle needs from :class:`~metering.prometheus.PrometheusClient`."""

    def query(self, promql: str, at: datetime) -> list[Sample]: ...


class Exporters(Protocol):
    """What the cycle needs from :class:`~metering.exporters.ExporterDirectory`."""

    def lookup(self, instances: Iterable[str]) -> Mapping[str, str]: ...

    def refresh(self) -> bool: ...


@dataclass(frozen=True)
class MeteringConfig:
    step: timedelta = timedelta(seconds=15)
    """Window grid and loop interval."""
    lag: timedelta = timedelta(seconds=30)
    """Window ends trail now by this much (>= scrape interval + scrape timeout)."""
    max_window: timedelta = timedelta(minutes=5)
    """Longest window when catching up."""
    scrape_margin: timedelta = timedelta(minutes=2)
    """Added to the query range so a series' last sample just before the window is found
    (>= the scrape interval; also the slack of the physics bounds)."""
    initial_lookback: timedelta = timedelta(hours=1)
    """Query range of the very first window (no checkpoint yet)."""
    max_span: timedelta = timedelta(days=14)
    """Cap of the query range (Prometheus retention)."""
    prune_after: timedelta = timedelta(hours=2)
    """The least time a series not read any more is remembered (see tombstone_retention,
    the longer of the two applies; > max_window + margin)."""
    token_namespace_label: str = "namespace"
    token_pod_label: str = "pod"
    checkpoint_name: str = CHECKPOINT_NAME
    exporter_job: str | None = None
    """Scrape job of the exporter: GPU series of other jobs are ignored (None: any job;
    simulations and benchmarks only, the operator always sets it)."""
    gpu_tolerance: timedelta | None = None
    """Slack of the GPU bound (None: GPU deltas are not bounded)."""
    max_token_rate: float | None = None
    """Tokens per second one token series may grow by (None: not bounded)."""
    tombstone_retention: timedelta = timedelta(days=15)
    """How long a vanished series is remembered (>= Prometheus' retention)."""
    max_tombstones: int = 50_000
    """Tombstones kept per source (GPU, each token source) at most."""
    time_scale: int = 1
    """How many times faster than wall time the counters' clock runs: 1 for real exporters;
    a simulated exporter at ``--speed 60`` counts 60 GPU-seconds per wall second, so the
    physics bounds scale with it (the demo's operator sets ``--simulation-speed``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.time_scale <= 3600:
            raise ValueError("time_scale must be within 1..3600")
        if self.prune_after <= self.max_window + self.scrape_margin:
            raise ValueError("prune_after must exceed max_window + scrape_margin")
        if self.max_window < self.step:
            raise ValueError("max_window must be at least step")
        if self.gpu_tolerance is not None and self.gpu_tolerance < timedelta(0):
            raise ValueError("gpu_tolerance cannot be negative")
        if self.max_token_rate is not None and not self.max_token_rate > 0:
            raise ValueError("max_token_rate must be positive")
        if self.max_tombstones < 0:
            raise ValueError("max_tombstones cannot be negative")

    @property
    def retention(self) -> timedelta:
        """How long a series not read any more is kept as a tombstone."""
        return max(self.prune_after, self.tombstone_retention)


@dataclass(frozen=True)
class SourceHealth:
    ok: bool
    series: int = 0
    error: str = ""


@dataclass
class TenantUsage:
    """Usage a tenant was billed in one window (base units)."""

    allocated_ms: int = 0
    active_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class UnassignedUsage:
    namespace: str
    pod: str
    reason: str
    allocated_ms: int = 0
    active_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class CycleResult:
    window: Window | None
    """The window committed (None: nothing due yet)."""
    tenants: dict[str, TenantUsage] = field(default_factory=dict)
    """Tenants billed in this window (``_unassigned`` included when it got usage)."""
    unassigned: list[UnassignedUsage] = field(default_factory=list)
    sources: dict[str, SourceHealth] = field(default_factory=dict)
    """Per source (``gpu``, ``tokens:<metric>``): read or not, and why."""
    namespace_conflicts: tuple[NamespaceConflict, ...] = ()
    untrusted: list[UntrustedSeries] = field(default_factory=list)
    """Series ignored by the source checks (at most MAX_REPORTED, sorted; each with the
    tenant its labels claim, for an Event there)."""
    untrusted_counts: dict[str, int] = field(default_factory=dict)
    """Every ignored series read, by reason (not capped)."""
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    """Deltas over a physics bound, held in the ledger (never billed) with this window."""
    replica_conflicts: int = 0
    """ConflictErrors met (another replica committed the window first) before success."""
    accepted: int = 0
    duplicates: int = 0
    query_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0

    @property
    def behind(self) -> bool:
        """More windows are due right away: run again without waiting."""
        return self.window is not None and self.window.behind

    @property
    def degraded(self) -> dict[str, str]:
        return {name: h.error for name, h in self.sources.items() if not h.ok}


@dataclass
class _State:
    time: datetime | None
    gpu: dict[str, dl.SeriesPoint]
    tokens: dict[str, dict[str, dl.SeriesPoint]]
    exporters: dict[str, tuple[str, int]] = field(default_factory=dict)
    span_ms: int | None = None
    """Query range of the read that ended at ``time`` (None: not recorded)."""

    @classmethod
    def load(cls, raw: Mapping[str, Any] | None) -> _State:
        if not raw:
            return cls(None, {}, {})
        if raw.get("version") != CHECKPOINT_VERSION:
            raise KubemeterError(f"metering checkpoint version {raw.get('version')!r} unknown")
        t = raw.get("time")
        when = datetime.fromisoformat(str(t).replace("Z", "+00:00")) if t else None
        tokens = {str(k): dl.decode(v, 1) for k, v in (raw.get("tokens") or {}).items()}
        exporters = {
            str(k): (str(v[0]), int(v[1])) for k, v in (raw.get("exporters") or {}).items()
        }
        span = raw.get("span_ms")
        return cls(
            when, dl.decode(raw.get("gpu"), 2), tokens, exporters,
            int(span) if span is not None else None,
        )  # fmt: skip

    def dump(self) -> dict[str, Any]:
        assert self.time is not None
        out: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "gpu": dl.encode(self.gpu),
            "tokens": {k: dl.encode(v) for k, v in sorted(self.tokens.items())},
        }
        if self.span_ms is not None:
            out["span_ms"] = self.span_ms
        if self.exporters:
            out["exporters"] = {k: [n, t] for k, (n, t) in sorted(self.exporters.items())}
        return out


def _mig(profile: str) -> str | None:
    return profile if MIG_PROFILE_RE.match(profile) else None


class MeteringCycle:
    """Runs metering windows. Not thread-safe; one per process (or per leader).

    ``exporters``: the exporter pods' addresses and nodes (the node check of the source
    trust); None: no node check (tests, simulations, an operator that does not know the
    exporter namespace)."""

    def __init__(
        self,
        ledger: Ledger,
        prometheus: Prometheus,
        pods: PodDirectory,
        config: MeteringConfig | None = None,
        *,
        metrics: MeteringMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        exporters: Exporters | None = None,
    ) -> None:
        self.ledger = ledger
        self.prometheus = prometheus
        self.pods = pods
        self.config = config or MeteringConfig()
        self.metrics = metrics
        self.clock = clock
        self.exporters = exporters
        self._logged: set[UntrustedSeries] = set()

    def metered_until(self) -> datetime | None:
        """The end of the last committed window, from the ledger's checkpoint (None: no
        window yet)."""
        return _State.load(self.ledger.get_checkpoint(self.config.checkpoint_name)).time

    def run(
        self,
        tenants: Sequence[Tenant],
        plans: Mapping[str, PricePlanSpec],
        now: datetime | None = None,
    ) -> CycleResult:
        """Meter the next due window. Raises TransientError (Prometheus or the ledger
        unreachable; nothing written) and other KubemeterErrors; never half-commits."""
        now = now or self.clock()
        tenancy = TenancyMap.build(tenants)
        conflicts = 0
        while True:
            try:
                result = self._run_once(tenancy, tenants, plans, now)
            except ConflictError as exc:
                conflicts += 1
                log.info("metering window already committed elsewhere (%s); reloading", exc)
                if conflicts >= _CONFLICT_RETRIES:
                    raise TransientError(f"metering: repeated ledger conflicts: {exc}") from exc
                continue
            result.replica_conflicts = conflicts
            return result

    # ---------------------------------------------------------------- internals

    def _run_once(
        self,
        tenancy: TenancyMap,
        tenants: Sequence[Tenant],
        plans: Mapping[str, PricePlanSpec],
        now: datetime,
    ) -> CycleResult:
        cfg = self.config
        t0 = time.perf_counter()
        raw_checkpoint = self.ledger.get_checkpoint(cfg.checkpoint_name)
        state = _State.load(raw_checkpoint)
        window = next_window(state.time, now, step=cfg.step, lag=cfg.lag, max_window=cfg.max_window)
        result = CycleResult(window, namespace_conflicts=tenancy.conflicts)
        if window is None:
            return result
        first = state.time is None
        lookback = window.duration if not first else cfg.initial_lookback
        span = min(max(lookback, window.duration) + cfg.scrape_margin, cfg.max_span)
        span_ms = max(1, span // _MS)

        # -- read (TransientError from the GPU source aborts the cycle) --------------
        job = cfg.exporter_job
        alloc_metric, active_metric = src.GPU_METRICS
        # allocated: every job, so that series of other jobs are seen and reported;
        # active: only the exporter's job (the other jobs' values are never needed)
        alloc = self.prometheus.query(last_value_query(alloc_metric, span_ms), window.end)
        active = self.prometheus.query(
            last_value_query(active_metric, span_ms, {"job": job} if job else None), window.end
        )
        nodes = self._exporter_nodes(alloc, state)
        alloc_ok, untrusted = trust.partition(alloc_metric, alloc, job=job, nodes=nodes)
        active_ok, _ = trust.partition(active_metric, active, job=job, nodes=nodes)
        gpu = src.join_gpu(alloc_ok, active_ok)
        result.sources[src.GPU_SOURCE] = SourceHealth(True, len(gpu))
        sources = _all_token_sources(plans)
        readings: dict[str, src.TokenReading] = {}
        for key, ts in sources.items():
            name = f"{src.TOKEN_SOURCE}:{ts.kind.value}:{ts.source.metric}"
            try:
                samples = self.prometheus.query(
                    last_value_query(ts.source.metric, span_ms, ts.source.labels), window.end
                )
            except KubemeterError as exc:
                log.warning("metering: token source %s not read: %s", name, exc)
                result.sources[name] = SourceHealth(False, 0, str(exc))
                continue
            ok, bad = trust.partition(
                ts.source.metric, samples, model_label=ts.source.model_label,
                namespace_label=cfg.token_namespace_label, pod_label=cfg.token_pod_label,
            )  # fmt: skip
            untrusted.extend(bad)
            readings[key] = src.read_tokens(
                ts, ok, namespace_label=cfg.token_namespace_label, pod_label=cfg.token_pod_label
            )
            result.sources[name] = SourceHealth(True, len(readings[key].series))
        t1 = time.perf_counter()
        result.query_s = t1 - t0

        # -- compute -------------------------------------------------------------------
        end_ms = to_ms(window.end)
        prune_before = end_ms - cfg.retention // _MS
        bounds = _Bounds.of(cfg, window, state.time, state.span_ms)
        builder = _Builder(window, tenancy, self.pods, result, bounds)
        points: dict[str, dl.SeriesPoint] = {}
        for sid, series in gpu.items():
            if first:  # the metering start: what the counters hold is the baseline
                points[sid] = dl.SeriesPoint(series.values, end_ms)
                continue
            point = builder.add_gpu(sid, series, state.gpu.get(sid))
            if point is not None:
                points[sid] = point
        new_state = _State(
            window.end,
            dl.advance(
                state.gpu, points, prune_before_ms=prune_before, max_tombstones=cfg.max_tombstones
            ),
            {},
            _remember(state.exporters, alloc_ok, nodes, end_ms, prune_before),
            span_ms,
        )
        allowed = _allowed_sources(tenants, plans, sources)
        for key, old in state.tokens.items():
            if key not in readings:  # not read now: keep as is (do not prune)
                new_state.tokens[key] = old
        for key, reading in readings.items():
            previous = state.tokens.get(key)
            if previous is None and not reading.series:
                continue  # nothing seen yet: the baseline is taken when series first show
            current: dict[str, dl.SeriesPoint] = {}
            for sid, s in reading.series.items():
                if previous is None:  # the source's baseline
                    current[sid] = dl.SeriesPoint((s.value,), end_ms)
                else:
                    current[sid] = builder.add_tokens(
                        reading.source, key, sid, s, previous.get(sid), allowed
                    )
            new_state.tokens[key] = dl.advance(
                previous or {}, current, prune_before_ms=prune_before,
                max_tombstones=cfg.max_tombstones,
            )  # fmt: skip
        windows = builder.finish()
        builder.report_untrusted(untrusted)
        self._log_untrusted(result.untrusted)
        t2 = time.perf_counter()
        result.compute_s = t2 - t1

        # -- commit usage, quarantine and checkpoint together ---------------------------
        recorded = self.ledger.record_metering(
            MeteringCommit(
                cfg.checkpoint_name, window.start, window.end, windows,
                checkpoint=new_state.dump(),
                # another replica that committed since we read the checkpoint wins; we reload
                expect=raw_checkpoint,
                quarantine=builder.quarantine,
            )
        )  # fmt: skip
        result.write_s = time.perf_counter() - t2
        result.accepted, result.duplicates = recorded.accepted, recorded.duplicates
        result.quarantined = list(builder.quarantine)
        self._observe(result, fresh=recorded.accepted > 0 or not windows)
        return result

    def _log_untrusted(self, items: Iterable[UntrustedSeries]) -> None:
        """Warn once per process about each ignored series (they come back every cycle)."""
        for u in items:
            if u in self._logged:
                continue
            if len(self._logged) >= MAX_REPORTED * 10:
                self._logged.clear()
            self._logged.add(u)
            log.warning("metering: %s", u.message)

    def _exporter_nodes(self, alloc: Sequence[Sample], state: _State) -> dict[str, str] | None:
        """instance -> node for the node check: the live exporter pods, else the targets
        verified earlier (checkpoint). An instance neither knows asks for a fresh list."""
        if self.exporters is None:
            return None
        job = self.config.exporter_job
        instances = {
            s.labels.get("instance", "")
            for s in alloc
            if job is None or s.labels.get("job", "") == job
        }
        instances.discard("")
        live = dict(self.exporters.lookup(instances))
        nodes = {instance: node for instance, (node, _) in state.exporters.items()}
        if instances - live.keys() - nodes.keys() and self.exporters.refresh():
            live = dict(self.exporters.lookup(instances))
        nodes.update(live)  # a live pod wins over a remembered one on the same address
        return nodes

    def _observe(self, result: CycleResult, *, fresh: bool) -> None:
        m = self.metrics
        if m is None or result.window is None:
            return
        m.cycles.labels("ok").inc()
        m.cycle_seconds.observe(result.query_s + result.compute_s + result.write_s)
        m.window_end.set(result.window.end.timestamp())
        m.namespace_conflicts.set(len({c.namespace for c in result.namespace_conflicts}))
        for name, health in result.sources.items():
            m.source_up.labels(name).set(1 if health.ok else 0)
            m.series.labels(name).set(health.series)
        for reason in trust.REASONS:
            n = result.untrusted_counts.get(reason, 0)
            m.untrusted.labels(reason).set(n)
            if n:
                m.untrusted_reads.labels(reason).inc(n)
        if not fresh:
            return
        for q in result.quarantined:
            m.quarantined.labels(q.source).inc()
        for u in result.unassigned:
            ns = u.namespace or "-"
            if u.allocated_ms:
                m.unassigned_allocated_ms.labels(ns).inc(u.allocated_ms)
            if u.active_ms:
                m.unassigned_active_ms.labels(ns).inc(u.active_ms)
            for kind, n in (
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("cached_prompt", u.cached_prompt_tokens),
            ):
                if n:
                    m.unassigned_tokens.labels(ns, kind).inc(n)


def _remember(
    before: Mapping[str, tuple[str, int]],
    trusted: Iterable[Sample],
    nodes: Mapping[str, str] | None,
    end_ms: int,
    prune_before_ms: int,
) -> dict[str, tuple[str, int]]:
    """The exporter targets to remember: those that produced trusted series now, and the
    earlier ones still within the retention (at most MAX_EXPORTERS, newest first)."""
    if nodes is None:
        return {}
    out = {i: v for i, v in before.items() if v[1] >= prune_before_ms}
    for s in trusted:
        instance = s.labels.get("instance", "")
        if instance in nodes:
            out[instance] = (nodes[instance], end_ms)
    if len(out) > MAX_EXPORTERS:
        keep = sorted(out.items(), key=lambda kv: (-kv[1][1], kv[0]))[:MAX_EXPORTERS]
        out = dict(keep)
    return out


def _all_token_sources(plans: Mapping[str, PricePlanSpec]) -> dict[str, src.TokenSource]:
    result: dict[str, src.TokenSource] = {}
    for _, plan in sorted(plans.items()):
        for ts in src.token_sources(plan):
            result.setdefault(ts.key, ts)
    return result


def _allowed_sources(
    tenants: Sequence[Tenant],
    plans: Mapping[str, PricePlanSpec],
    sources: Mapping[str, src.TokenSource],
) -> dict[str, frozenset[str]]:
    """Source keys each tenant's plan meters from Prometheus. A tenant whose plan is unknown
    (not loaded yet) and the unassigned bucket take every source: usage is kept."""
    everything = frozenset(sources)
    allowed = {UNASSIGNED: everything}
    for t in tenants:
        plan = plans.get(t.spec.price_plan_ref.name)
        allowed[t.name] = (
            everything if plan is None else frozenset(ts.key for ts in src.token_sources(plan))
        )
    return allowed


@dataclass(frozen=True)
class _Bounds:
    """The physics bounds of one window's deltas (see the module docstring)."""

    start_ms: int
    end_ms: int
    margin_ms: int
    last_end_ms: int | None
    """End of the previous window (the checkpoint's time)."""
    last_span_ms: int
    """Query range of the previous read: how old a sample it counted can have been."""
    wide_ms: int
    """How old a sample counted in any earlier read can have been (max_window + margin)."""
    gpu_tolerance_ms: int | None
    token_rate: Fraction | None
    """Tokens per millisecond."""
    scale: int = 1
    """Counter milliseconds per wall millisecond (``MeteringConfig.time_scale``)."""

    @classmethod
    def of(
        cls,
        cfg: MeteringConfig,
        window: Window,
        last_end: datetime | None,
        last_span_ms: int | None,
    ) -> _Bounds:
        margin = cfg.scrape_margin // _MS
        wide = max(cfg.max_window // _MS + margin, last_span_ms or 0)
        return cls(
            to_ms(window.start),
            to_ms(window.end),
            margin,
            to_ms(last_end) if last_end is not None else None,
            last_span_ms if last_span_ms is not None else wide,
            wide,
            None if cfg.gpu_tolerance is None else cfg.gpu_tolerance // _MS,
            None if cfg.max_token_rate is None else Fraction(cfg.max_token_rate) / 1000,
            cfg.time_scale,
        )

    def since(self, previous: dl.SeriesPoint | None) -> int:
        """Start of the span a delta covers: when the series last changed (new: the
        window start)."""
        return self.start_ms if previous is None else min(previous.seen_ms, self.start_ms)

    def slack(self, previous: dl.SeriesPoint | None) -> int:
        """How much older than ``since`` the sample behind the counted value can be."""
        if previous is None:
            return self.margin_ms  # new: no sample before the previous read's range
        if previous.seen_ms == self.last_end_ms:
            return self.last_span_ms  # it changed in the previous read
        return self.wide_ms

    def gpu(self, since_ms: int, slack_ms: int) -> int | None:
        if self.gpu_tolerance_ms is None:
            return None
        return (self.end_ms - since_ms + slack_ms) * self.scale + self.gpu_tolerance_ms

    def tokens(self, since_ms: int, slack_ms: int) -> int | None:
        if self.token_rate is None:
            return None
        limit = self.token_rate * (self.end_ms - since_ms + slack_ms) * self.scale
        return limit.numerator // limit.denominator


class _Builder:
    """Accumulates one window's usage records, per-tenant sums, unassigned usage and the
    deltas held in quarantine."""

    def __init__(
        self,
        window: Window,
        tenancy: TenancyMap,
        pods: PodDirectory,
        result: CycleResult,
        bounds: _Bounds,
    ) -> None:
        self.window = window
        self.tenancy = tenancy
        self.pods = pods
        self.result = result
        self.bounds = bounds
        self.windows: list[UsageWindow] = []
        self.quarantine: list[QuarantineEntry] = []
        self.tokens: dict[tuple[str, str, str, str], TenantUsage] = {}
        self.unassigned: dict[tuple[str, str, str], UnassignedUsage] = {}

    def _resolve(self, namespace: str, pod: str, uid: str = "") -> PodMeta | None:
        """The pod a series names: by UID first (the exporter learns it from cgroups),
        else by namespace/name. A series the exporter could name by UID only (a pod that
        reached a GPU without a device allocation) is resolved here."""
        if uid or (namespace and pod):
            return self.pods.lookup(namespace, pod, uid)
        return None

    def _assign(self, namespace: str, pod: str, uid: str = "") -> tuple[str, str]:
        meta = self._resolve(namespace, pod, uid)
        if meta is not None and uid and not namespace:
            namespace = meta.namespace
        a = self.tenancy.assign(namespace, meta.labels if meta is not None else None)
        return a.tenant, a.reason

    def _unassigned(self, namespace: str, pod: str, reason: str) -> UnassignedUsage:
        key = (namespace, pod, reason)
        u = self.unassigned.get(key)
        if u is None:
            u = self.unassigned[key] = UnassignedUsage(namespace, pod, reason)
        return u

    def _hold(
        self, tenant: str, source: str, series: str, start: datetime, reason: str,
        record: UsageRecord,
    ) -> None:  # fmt: skip
        log.warning("metering: %s series %s (tenant %s) quarantined: %s", source, series,
                    tenant, reason)  # fmt: skip
        self.quarantine.append(
            QuarantineEntry(tenant, source, series, start, self.window.end, reason, record)
        )

    def add_gpu(
        self, sid: str, s: src.GpuSeries, previous: dl.SeriesPoint | None
    ) -> dl.SeriesPoint | None:
        """Count one GPU series; returns its checkpoint point (what is counted; None:
        leave the series as it was)."""
        d = dl.delta(previous, s.values)
        base = (0, 0) if previous is None or d.reset else previous.values
        alloc_d = d.delta[0]
        active_d = min(d.delta[1], alloc_d)  # carry any excess active ms to the next window
        counted = (base[0] + alloc_d, base[1] + active_d)
        if previous is not None and counted == previous.values:
            return previous  # unchanged: seen_ms stays where the value last changed
        if d.reset:
            log.warning("metering: counter reset on GPU series %s (%s/%s)", sid, s.namespace, s.pod)
        point = dl.SeriesPoint(counted, self.bounds.end_ms)
        if alloc_d <= 0:
            return point
        since_ms = self.bounds.since(previous)
        start = self.window.start if since_ms >= self.bounds.start_ms else from_ms(since_ms)
        tenant, reason = self._assign(s.namespace, s.pod, s.pod_uid)
        namespace, pod = s.namespace, s.pod
        if not namespace and s.pod_uid:  # named by UID only: the registry knows its name
            meta = self._resolve("", "", s.pod_uid)
            if meta is not None:
                namespace, pod = meta.namespace, meta.name
        try:
            record = GpuUsage(
                namespace=namespace or None,
                pod=pod or None,
                model=s.gpu_model or "unknown",
                mig_profile=_mig(s.mig_profile),
                allocated_ms=alloc_d,
                active_ms=active_d,
                window_start=start,
                window_end=self.window.end,
            )
        except ValidationError as exc:  # the trust checks should have refused it
            log.error("metering: GPU series %s not counted: %s", sid, exc)
            return previous
        limit = self.bounds.gpu(since_ms, self.bounds.slack(previous))
        if limit is not None and alloc_d > limit:
            self._hold(
                tenant, src.GPU_SOURCE, sid, start,
                f"{alloc_d} allocated ms exceed the {limit} ms bound: the wall time since "
                f"{start.isoformat()}, the age its last counted sample can have had and the "
                f"tolerance",
                record,
            )  # fmt: skip
            return point
        self.windows.append(
            UsageWindow(tenant, src.GPU_SOURCE, sid, start, self.window.end, record)
        )
        usage = self.result.tenants.setdefault(tenant, TenantUsage())
        usage.allocated_ms += alloc_d
        usage.active_ms += active_d
        if tenant == UNASSIGNED:
            u = self._unassigned(s.namespace, s.pod, reason)
            u.allocated_ms += alloc_d
            u.active_ms += active_d
        return point

    def add_tokens(
        self,
        source: src.TokenSource,
        key: str,
        sid: str,
        s: src.TokenSeries,
        previous: dl.SeriesPoint | None,
        allowed: Mapping[str, frozenset[str]],
    ) -> dl.SeriesPoint:
        """Count one token series; returns its checkpoint point."""
        d = dl.delta(previous, (s.value,))
        n = d.delta[0]
        base = 0 if previous is None or d.reset else previous.values[0]
        counted = (base + n,)
        if previous is not None and counted == previous.values:
            return previous
        point = dl.SeriesPoint(counted, self.bounds.end_ms)
        if n <= 0:
            return point
        tenant, reason = self._assign(s.namespace, s.pod)
        if key not in allowed.get(tenant, frozenset()):
            return point  # the tenant's plan meters these tokens from events, not from Prometheus
        since_ms = self.bounds.since(previous)
        limit = self.bounds.tokens(since_ms, self.bounds.slack(previous))
        if limit is not None and n > limit:
            # a record keeps cached <= prompt: held cached tokens are held as prompt too
            # (prompt - cached of it is 0: releasing it bills the cached tokens only)
            amounts = {source.field: n}
            if source.kind is MeterKind.CACHED_PROMPT_TOKENS:
                amounts["prompt_tokens"] = n
            record = TokenUsage(
                namespace=s.namespace or None, pod=s.pod or None, model=s.model,
                timestamp=self.window.start, **amounts,
            )  # fmt: skip
            self._hold(
                tenant, src.TOKEN_SOURCE, f"{key}/{sid}", self.window.start,
                f"{n} {source.kind.value} exceed the {limit} bound: {source.source.metric} "
                f"since {from_ms(since_ms).isoformat()} at the configured maximum rate",
                record,
            )  # fmt: skip
            return point
        acc = self.tokens.setdefault((tenant, s.namespace, s.pod, s.model), TenantUsage())
        setattr(acc, source.field, getattr(acc, source.field) + n)
        if tenant == UNASSIGNED:
            u = self._unassigned(s.namespace, s.pod, reason)
            setattr(u, source.field, getattr(u, source.field) + n)
        return point

    def report_untrusted(self, items: Iterable[UntrustedSeries]) -> None:
        """The ignored series of this read, each with the tenant its labels claim."""
        seen: dict[tuple[str, ...], UntrustedSeries] = {}
        counts: Counter[str] = Counter()
        for u in items:
            counts[u.reason] += 1
            key = (u.metric, u.namespace, u.pod, u.job, u.instance, u.node, u.reason)
            if key in seen or len(seen) >= MAX_REPORTED:
                continue
            tenant, _ = self._assign(u.namespace, u.pod)
            seen[key] = replace(u, tenant="" if tenant == UNASSIGNED else tenant)
        self.result.untrusted = [seen[k] for k in sorted(seen)]
        self.result.untrusted_counts = dict(counts)

    def finish(self) -> list[UsageWindow]:
        for (tenant, namespace, pod, model), acc in sorted(self.tokens.items()):
            cached = min(acc.cached_prompt_tokens, acc.prompt_tokens)
            if cached < acc.cached_prompt_tokens:
                log.warning(
                    "metering: %s/%s model %s: cached prompt tokens above prompt tokens; "
                    "capped at %d", namespace, pod, model, cached,
                )  # fmt: skip
            record = TokenUsage(
                namespace=namespace or None,
                pod=pod or None,
                model=model,
                prompt_tokens=acc.prompt_tokens,
                completion_tokens=acc.completion_tokens,
                cached_prompt_tokens=cached,
                timestamp=self.window.start,
            )
            series = dl.series_id({"namespace": namespace, "pod": pod, "model": model})
            self.windows.append(
                UsageWindow(
                    tenant, src.TOKEN_SOURCE, series, self.window.start, self.window.end, record
                )
            )
            usage = self.result.tenants.setdefault(tenant, TenantUsage())
            usage.prompt_tokens += acc.prompt_tokens
            usage.completion_tokens += acc.completion_tokens
            usage.cached_prompt_tokens += cached
        self.result.unassigned = sorted(
            self.unassigned.values(), key=lambda u: (u.namespace, u.pod, u.reason)
        )
        return self.windows


__all__ = [
    "CHECKPOINT_NAME",
    "MAX_REPORTED",
    "CycleResult",
    "Exporters",
    "Ledger",
    "MeteringConfig",
    "MeteringCycle",
    "Prometheus",
    "SourceHealth",
    "TenantUsage",
    "UnassignedUsage",
    "UntrustedSeries",
]
