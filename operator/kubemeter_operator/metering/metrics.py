"""The operator's own Prometheus metrics for metering (names defined once, here)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

UNASSIGNED_GPU_ALLOCATED_MS = "kubemeter_unassigned_gpu_allocated_milliseconds_total"
UNASSIGNED_GPU_ACTIVE_MS = "kubemeter_unassigned_gpu_active_milliseconds_total"
UNASSIGNED_TOKENS = "kubemeter_unassigned_tokens_total"
METERING_CYCLES = "kubemeter_metering_cycles_total"
METERING_CYCLE_SECONDS = "kubemeter_metering_cycle_duration_seconds"
METERING_WINDOW_END = "kubemeter_metering_window_end_timestamp_seconds"
METERING_SOURCE_UP = "kubemeter_metering_source_up"
METERING_SERIES = "kubemeter_metering_series"
METERING_NAMESPACE_CONFLICTS = "kubemeter_metering_namespace_conflicts"
METERING_UNTRUSTED_SERIES = "kubemeter_metering_untrusted_series"
METERING_UNTRUSTED_READS = "kubemeter_metering_untrusted_reads_total"
"""A counter cannot be named ``<gauge>_total`` next to the gauge (prometheus_client: one
family name), hence ``..._reads_total``: series ignored, summed over cycles."""
METERING_QUARANTINED = "kubemeter_metering_quarantined_total"


def _strip_total(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


class MeteringMetrics:
    """Metrics of the metering loop, registered on ``registry`` (default: the global one).

    Unassigned and quarantined usage is counted once per window, after the ledger commit.
    Untrusted series (:mod:`~kubemeter_operator.metering.trust`): the gauge holds the last
    cycle's count per reason, the counter their sum over cycles.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.unassigned_allocated_ms = Counter(
            _strip_total(UNASSIGNED_GPU_ALLOCATED_MS),
            "GPU milliseconds allocated to pods that no Tenant owns.",
            ["namespace"],
            registry=r,
        )
        self.unassigned_active_ms = Counter(
            _strip_total(UNASSIGNED_GPU_ACTIVE_MS),
            "Active GPU milliseconds of pods that no Tenant owns.",
            ["namespace"],
            registry=r,
        )
        self.unassigned_tokens = Counter(
            _strip_total(UNASSIGNED_TOKENS),
            "LLM tokens (by kind: prompt, completion, cached_prompt) of pods no Tenant owns.",
            ["namespace", "kind"],
            registry=r,
        )
        self.cycles = Counter(
            _strip_total(METERING_CYCLES),
            "Metering cycles by outcome (ok, idle, conflict, transient, error).",
            ["outcome"],
            registry=r,
        )
        self.cycle_seconds = Histogram(
            METERING_CYCLE_SECONDS,
            "Wall time of one metering window (query, compute, ledger write).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.window_end = Gauge(
            METERING_WINDOW_END, "End of the last window committed to the ledger.", registry=r
        )
        self.source_up = Gauge(
            METERING_SOURCE_UP,
            "1 when the source was read in the last cycle.",
            ["source"],
            registry=r,
        )
        self.series = Gauge(
            METERING_SERIES, "Counter series read in the last cycle.", ["source"], registry=r
        )
        self.namespace_conflicts = Gauge(
            METERING_NAMESPACE_CONFLICTS, "Namespaces claimed by more than one Tenant.", registry=r
        )
        self.untrusted = Gauge(
            METERING_UNTRUSTED_SERIES,
            "Series with a metered metric's name ignored in the last cycle, by reason "
            "(job, instance, node, value, labels).",
            ["reason"],
            registry=r,
        )
        self.untrusted_reads = Counter(
            _strip_total(METERING_UNTRUSTED_READS),
            "Series ignored as untrusted, summed over metering cycles, by reason.",
            ["reason"],
            registry=r,
        )
        self.quarantined = Counter(
            _strip_total(METERING_QUARANTINED),
            "Counter deltas over a physics bound, held in the ledger's quarantine (never "
            "billed unless released), by source (gpu, tokens).",
            ["source"],
            registry=r,
        )
