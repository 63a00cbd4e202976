"""One metering cycle: counter values at the window end -> per-tenant usage windows.

    cycle = MeteringCycle(ledger, PrometheusClient(url), pods)
    result = cycle.run(tenants, plans)       # one window; result.behind: call again now

Each run:

1. loads the checkpoint (``ledger.get_checkpoint("metering")``): the last window end and
   the counted value of every series;
2. picks the next window ``[checkpoint time, T]`` (:func:`windows.next_window`: T on the
   step grid, trailing now by the lag; at most ``max_window``; never across a period end);
3. reads every counter's last raw value at T (``last_over_time(<counter>[span])``), so
   series that stopped inside the window still give their final value;
4. takes per-series deltas against the checkpoint (new series start from 0), maps pods to
   tenants (:mod:`kubemeter_operator.metering.tenancy`; unowned usage goes to ``_unassigned``);
5. writes the usage windows *and* the new checkpoint in one ``ledger.record_windows`` call.

A crash anywhere before step 5 commits nothing, and the next run recomputes the same window
from the same checkpoint; after step 5 everything is committed. A ConflictError (another
replica committed this window first) reloads the checkpoint and tries again. Prometheus
unreachable raises TransientError before anything is written; the checkpoint stays, and the
next successful run backfills the missed span window by window.

Checkpoint (JSON, ledger checkpoint ``metering``)::

    {"version": 1,
     "time": "2026-11-30T12:00:15Z",               # end of the last committed window
     "gpu": {"<series id>": [allocated_ms, active_ms, seen_ms], ...},
     "tokens": {"<source key>": {"<series id>": [value, seen_ms], ...}, ...}}

``seen_ms`` is the window end (epoch ms) at which the series was last read; series unseen
for ``prune_after`` are dropped. The stored values are what has been *counted* (active ms
above allocated ms in one window is carried to the next, so ``active <= allocated`` holds per
record without losing anything).

Token sources: the first time a source appears with series (a plan gains a Prometheus token
meter) its current values are taken as the baseline and nothing is billed for them, so months of
history in a long-running inference server's counters are not billed at once. GPU series
have no such baseline: the exporter is installed with the operator, and its series are born
at 0 (on the very first run, what the counters hold is billed into the first window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.types import MIG_PROFILE_RE
from kubemeter_operator.api.usage import GpuUsage, TokenUsage
from kubemeter_operator.errors import ConflictError, KubemeterError, TransientError
from kubemeter_operator.ledger import RecordResult, UsageWindow
from kubemeter_operator.metering import deltas as dl
from kubemeter_operator.metering import sources as src
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodDirectory
from kubemeter_operator.metering.prometheus import Sample, last_value_query
from kubemeter_operator.metering.tenancy import UNASSIGNED, NamespaceConflict, TenancyMap
from kubemeter_operator.metering.windows import Window, next_window, to_ms

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "metering"
CHECKPOINT_VERSION = 1
_CONFLICT_RETRIES = 3


class Ledger(Protocol):
    """What the cycle needs from :class:`kubemeter_operator.ledger.Ledger`."""

    def get_checkpoint(self, name: str) -> dict[str, Any] | None: ...

    def record_windows(
        self,
        windows: Sequence[UsageWindow],
        *,
        checkpoints: Mapping[str, Mapping[str, Any]] | None = None,
        expect_checkpoints: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> RecordResult: ...


class Prometheus(Protocol):
    """What the cycle needs from :class:`~metering.prometheus.PrometheusClient`."""

    def query(self, promql: str, at: datetime) -> list[Sample]: ...


@dataclass(frozen=True)
class MeteringConfig:
    step: timedelta = timedelta(seconds=15)
    """Window grid and loop interval."""
    lag: timedelta = timedelta(seconds=30)
    """Window ends trail now by this much (>= scrape interval + scrape timeout)."""
    max_window: timedelta = timedelta(minutes=5)
    """Longest window when catching up."""
    scrape_margin: timedelta = timedelta(minutes=2)
    """Added to the query range so a series' last sample just before the window is found."""
    initial_lookback: timedelta = timedelta(hours=1)
    """Query range of the very first window (no checkpoint yet)."""
    max_span: timedelta = timedelta(days=14)
    """Cap of the query range (Prometheus retention)."""
    prune_after: timedelta = timedelta(hours=2)
    """Drop series from the checkpoint when unseen this long (> max_window + margin)."""
    token_namespace_label: str = "namespace"
    token_pod_label: str = "pod"
    checkpoint_name: str = CHECKPOINT_NAME

    def __post_init__(self) -> None:
        if self.prune_after <= self.max_window + self.scrape_margin:
            raise ValueError("prune_after must exceed max_window + scrape_margin")
        if self.max_window < self.step:
            raise ValueError("max_window must be at least step")


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

    @classmethod
    def load(cls, raw: Mapping[str, Any] | None) -> _State:
        if not raw:
            return cls(None, {}, {})
        if raw.get("version") != CHECKPOINT_VERSION:
            raise KubemeterError(f"metering checkpoint version {raw.get('version')!r} unknown")
        t = raw.get("time")
        when = datetime.fromisoformat(str(t).replace("Z", "+00:00")) if t else None
        tokens = {str(k): dl.decode(v, 1) for k, v in (raw.get("tokens") or {}).items()}
        return cls(when, dl.decode(raw.get("gpu"), 2), tokens)

    def dump(self) -> dict[str, Any]:
        assert self.time is not None
        return {
            "version": CHECKPOINT_VERSION,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "gpu": dl.encode(self.gpu),
            "tokens": {k: dl.encode(v) for k, v in sorted(self.tokens.items())},
        }


def _mig(profile: str) -> str | None:
    return profile if MIG_PROFILE_RE.match(profile) else None


class MeteringCycle:
    """Runs metering windows. Not thread-safe; one per process (or per leader)."""

    def __init__(
        self,
        ledger: Ledger,
        prometheus: Prometheus,
        pods: PodDirectory,
        config: MeteringConfig | None = None,
        *,
        metrics: MeteringMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ledger = ledger
        self.prometheus = prometheus
        self.pods = pods
        self.config = config or MeteringConfig()
        self.metrics = metrics
        self.clock = clock

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
        lookback = window.duration if state.time is not None else cfg.initial_lookback
        span = min(max(lookback, window.duration) + cfg.scrape_margin, cfg.max_span)
        span_ms = max(1, span // timedelta(milliseconds=1))

        # -- read (TransientError from the GPU source aborts the cycle) --------------
        alloc = self.prometheus.query(last_value_query(src.GPU_METRICS[0], span_ms), window.end)
        active = self.prometheus.query(last_value_query(src.GPU_METRICS[1], span_ms), window.end)
        gpu = src.join_gpu(alloc, active)
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
            readings[key] = src.read_tokens(
                ts,
                samples,
                namespace_label=cfg.token_namespace_label,
                pod_label=cfg.token_pod_label,
            )
            result.sources[name] = SourceHealth(True, len(readings[key].series))
        t1 = time.perf_counter()
        result.query_s = t1 - t0

        # -- compute -------------------------------------------------------------------
        end_ms = to_ms(window.end)
        prune_before = end_ms - cfg.prune_after // timedelta(milliseconds=1)
        builder = _Builder(window, tenancy, self.pods, result)
        counted_gpu: dict[str, dl.Values] = {}
        for sid, series in gpu.items():
            counted_gpu[sid] = builder.add_gpu(sid, series, state.gpu.get(sid))
        new_state = _State(
            window.end,
            dl.advance(state.gpu, counted_gpu, seen_ms=end_ms, prune_before_ms=prune_before),
            {},
        )
        allowed = _allowed_sources(tenants, plans, sources)
        for key, points in state.tokens.items():
            if key not in readings:  # not read now: keep as is (do not prune)
                new_state.tokens[key] = points
        for key, reading in readings.items():
            previous = state.tokens.get(key)
            if previous is None and not reading.series:
                continue  # nothing seen yet: the baseline is taken when series first show
            current = {sid: (s.value,) for sid, s in reading.series.items()}
            if previous is not None:
                for sid, s in reading.series.items():
                    d = dl.delta(previous.get(sid), (s.value,))
                    builder.add_tokens(reading.source, key, s, d.delta[0], allowed)
            new_state.tokens[key] = dl.advance(
                previous or {}, current, seen_ms=end_ms, prune_before_ms=prune_before
            )
        windows = builder.finish()
        t2 = time.perf_counter()
        result.compute_s = t2 - t1

        # -- commit usage and checkpoint together -------------------------------------
        recorded = self.ledger.record_windows(
            windows,
            checkpoints={cfg.checkpoint_name: new_state.dump()},
            # another replica that committed since we read the checkpoint wins; we reload
            expect_checkpoints={cfg.checkpoint_name: raw_checkpoint},
        )
        result.write_s = time.perf_counter() - t2
        result.accepted, result.duplicates = recorded.accepted, recorded.duplicates
        self._observe(result, fresh=recorded.accepted > 0 or not windows)
        return result

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
        if not fresh:
            return
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


class _Builder:
    """Accumulates one window's usage records, per-tenant sums and unassigned usage."""

    def __init__(
        self, window: Window, tenancy: TenancyMap, pods: PodDirectory, result: CycleResult
    ) -> None:
        self.window = window
        self.tenancy = tenancy
        self.pods = pods
        self.result = result
        self.windows: list[UsageWindow] = []
        self.tokens: dict[tuple[str, str, str, str], TenantUsage] = {}
        self.unassigned: dict[tuple[str, str, str], UnassignedUsage] = {}

    def _assign(self, namespace: str, pod: str, uid: str = "") -> tuple[str, str]:
        meta = self.pods.lookup(namespace, pod, uid) if namespace and pod else None
        a = self.tenancy.assign(namespace, meta.labels if meta is not None else None)
        return a.tenant, a.reason

    def _unassigned(self, namespace: str, pod: str, reason: str) -> UnassignedUsage:
        key = (namespace, pod, reason)
        u = self.unassigned.get(key)
        if u is None:
            u = self.unassigned[key] = UnassignedUsage(namespace, pod, reason)
        return u

    def add_gpu(self, sid: str, s: src.GpuSeries, previous: dl.SeriesPoint | None) -> dl.Values:
        """Count one GPU series; returns the values to checkpoint (what is counted)."""
        d = dl.delta(previous, s.values)
        base = (0, 0) if previous is None or d.reset else previous.values
        alloc_d = d.delta[0]
        active_d = min(d.delta[1], alloc_d)  # carry any excess active ms to the next window
        if d.reset:
            log.warning("metering: counter reset on GPU series %s (%s/%s)", sid, s.namespace, s.pod)
        if alloc_d > 0:
            tenant, reason = self._assign(s.namespace, s.pod, s.pod_uid)
            record = GpuUsage(
                namespace=s.namespace or None,
                pod=s.pod or None,
                model=s.gpu_model or "unknown",
                mig_profile=_mig(s.mig_profile),
                allocated_ms=alloc_d,
                active_ms=active_d,
                window_start=self.window.start,
                window_end=self.window.end,
            )
            self.windows.append(
                UsageWindow(tenant, src.GPU_SOURCE, sid, self.window.start, self.window.end, record)
            )
            usage = self.result.tenants.setdefault(tenant, TenantUsage())
            usage.allocated_ms += alloc_d
            usage.active_ms += active_d
            if tenant == UNASSIGNED:
                u = self._unassigned(s.namespace, s.pod, reason)
                u.allocated_ms += alloc_d
                u.active_ms += active_d
        return (base[0] + alloc_d, base[1] + active_d)

    def add_tokens(
        self,
        source: src.TokenSource,
        key: str,
        s: src.TokenSeries,
        n: int,
        allowed: Mapping[str, frozenset[str]],
    ) -> None:
        if n <= 0:
            return
        tenant, reason = self._assign(s.namespace, s.pod)
        if key not in allowed.get(tenant, frozenset()):
            return  # the tenant's plan meters these tokens from events, not from Prometheus
        acc = self.tokens.setdefault((tenant, s.namespace, s.pod, s.model), TenantUsage())
        setattr(acc, source.field, getattr(acc, source.field) + n)
        if tenant == UNASSIGNED:
            u = self._unassigned(s.namespace, s.pod, reason)
            setattr(u, source.field, getattr(u, source.field) + n)

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
    "CycleResult",
    "Ledger",
    "MeteringConfig",
    "MeteringCycle",
    "Prometheus",
    "SourceHealth",
    "TenantUsage",
    "UnassignedUsage",
]
