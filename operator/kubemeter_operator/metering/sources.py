"""What the metering cycle reads from Prometheus, which of it may count, and how it becomes
per-series values.

GPU time (the exporter's contract, imported from ``kubemeter_exporter.contract``)::

    last_over_time(kubemeter_gpu_allocated_milliseconds_total[<span>ms])             @ window end
    last_over_time(kubemeter_gpu_active_milliseconds_total{job="<job>"}[<span>ms])   @ window end

joined per series on the contract's counter labels (node, gpu_uuid, gpu_model, mig_profile,
namespace, pod, pod_uid, exporter_instance); ``job`` and ``instance`` are not part of a
series' identity. The allocated counter is read from every job on purpose: series with the
exporter's metric names from any other job are thereby seen, ignored and reported (a
``job`` matcher would hide them); the active counter is read from the exporter's job only.
Which samples count is :mod:`kubemeter_operator.metering.trust`'s decision: the exporter's
scrape job (``--exporter-job``), a target ``instance`` that is an exporter pod's
``<pod IP>:<port>`` (``--exporter-namespace``, ``--exporter-selector``), on the node the
series' ``node`` label names, and a valid value.

That check is only as good as the scrape configuration, which must keep two promises:

* the exporter's job is the only one with ``honor_labels: true`` (any job with it lets its
  targets write their own ``job``, ``instance`` and ``namespace`` labels), and
* it discovers the exporter pods only (their namespace, their labels) and keeps
  ``instance`` = ``<pod IP>:<port>``::

    - job_name: kubemeter-exporter
      honor_labels: true            # the exporter's namespace/pod labels name the tenant
      kubernetes_sd_configs:
        - role: pod
          namespaces: {names: [kubemeter]}
      relabel_configs:
        - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component],
           regex: exporter, action: keep}
        - {source_labels: [__meta_kubernetes_pod_container_port_name],
           regex: metrics, action: keep}
        - {source_labels: [__address__], target_label: instance}   # <pod IP>:<port>

A target elsewhere that exposes ``kubemeter_gpu_*`` counters naming another tenant is then
scraped with its own job (and, without ``honor_labels``, its own ``namespace``): ignored.

LLM tokens: meters of kind promptTokens / completionTokens / cachedPromptTokens that carry a
``source`` (a :class:`PrometheusSource`) are read the same way::

    last_over_time(<source.metric>{<source.labels>}[<span>ms])             @ window end

Token series come only from the jobs a PricePlan names: a ``job`` entry in
``source.labels`` is a matcher of the query, so only that job's series are read. A source
without one accepts any job; its series are attributed by their ``namespace`` and ``pod``
labels under the tenancy rule (:mod:`~kubemeter_operator.usage.tenancy`: the Tenant that
owns the namespace, and, when it has a podSelector, only a pod the operator knows with
matching labels; anything else is ``_unassigned``, never dropped). Those labels are the
target's own when the scrape job sets them from service discovery without ``honor_labels``,
so a pod can only report tokens for its own namespace::

    relabel_configs:
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}

(Requiring a known pod for every token series was considered and not done: pods deleted more
than the pod registry's retention before a backfilled window would lose real usage.)
The model is in ``source.modelLabel`` (vLLM: ``model_name``). For vLLM the sources are
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` (see :data:`VLLM_PROMPT`,
:data:`VLLM_COMPLETION`); cached prompt tokens come from an optional counter named in a
``cachedPromptTokens`` meter's source. Token meters without a source are fed by the events
API only, and are never read here (that would count twice).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kubemeter_exporter import contract
from kubemeter_operator.api.priceplan import MeterKind, PricePlanSpec, PrometheusSource
from kubemeter_operator.metering.deltas import Values, series_id
from kubemeter_operator.metering.prometheus import Sample

GPU_SOURCE = "gpu"
"""Ledger source name of GPU-time windows."""
TOKEN_SOURCE = "tokens"
"""Ledger source name of token windows read from Prometheus."""

GPU_METRICS = (contract.GPU_ALLOCATED_MS.name, contract.GPU_ACTIVE_MS.name)
GPU_IDENTITY_LABELS: tuple[str, ...] = contract.COUNTER_LABELS

VLLM_PROMPT = PrometheusSource(metric="vllm:prompt_tokens_total", model_label="model_name")
VLLM_COMPLETION = PrometheusSource(metric="vllm:generation_tokens_total", model_label="model_name")

TOKEN_FIELDS: dict[MeterKind, str] = {
    MeterKind.PROMPT_TOKENS: "prompt_tokens",
    MeterKind.COMPLETION_TOKENS: "completion_tokens",
    MeterKind.CACHED_PROMPT_TOKENS: "cached_prompt_tokens",
}


def _int(value: float) -> int:
    return max(0, round(value))


@dataclass(frozen=True, slots=True)
class GpuSeries:
    """One exporter series (a pod on a GPU or MIG instance) with its counter values."""

    namespace: str
    pod: str
    pod_uid: str
    gpu_model: str
    mig_profile: str
    values: Values
    """(allocated_ms, active_ms)"""


def join_gpu(allocated: Iterable[Sample], active: Iterable[Sample]) -> dict[str, GpuSeries]:
    """Join the two counters per series id; duplicates (two scrape jobs) keep the maximum."""
    alloc: dict[str, tuple[Mapping[str, str], int]] = {}
    act: dict[str, int] = {}
    for s in allocated:
        sid = series_id(s.labels, GPU_IDENTITY_LABELS)
        v = _int(s.value)
        if sid not in alloc or alloc[sid][1] < v:
            alloc[sid] = (s.labels, v)
    for s in active:
        sid = series_id(s.labels, GPU_IDENTITY_LABELS)
        act[sid] = max(act.get(sid, 0), _int(s.value))
    result: dict[str, GpuSeries] = {}
    for sid, (labels, a) in alloc.items():
        result[sid] = GpuSeries(
            namespace=labels.get(contract.LABEL_NAMESPACE, ""),
            pod=labels.get(contract.LABEL_POD, ""),
            pod_uid=labels.get(contract.LABEL_POD_UID, ""),
            gpu_model=labels.get(contract.LABEL_GPU_MODEL, ""),
            mig_profile=labels.get(contract.LABEL_MIG_PROFILE, ""),
            values=(a, act.get(sid, 0)),
        )
    return result


@dataclass(frozen=True)
class TokenSource:
    """One token counter to read: a meter kind and where its counter lives."""

    kind: MeterKind
    source: PrometheusSource

    @property
    def key(self) -> str:
        """Stable short id (checkpoint key)."""
        text = json.dumps(
            [self.kind.value, self.source.metric, sorted(self.source.labels.items()),
             self.source.model_label],
            separators=(",", ":"),
        )  # fmt: skip
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    @property
    def field(self) -> str:
        return TOKEN_FIELDS[self.kind]


def token_sources(plan: PricePlanSpec) -> list[TokenSource]:
    """The Prometheus token sources a plan's meters name (deduplicated, stable order)."""
    seen: dict[str, TokenSource] = {}
    for meter in plan.meters:
        if meter.kind in TOKEN_FIELDS and meter.source is not None:
            ts = TokenSource(meter.kind, meter.source)
            seen.setdefault(ts.key, ts)
    return sorted(seen.values(), key=lambda t: t.key)


@dataclass(frozen=True, slots=True)
class TokenSeries:
    namespace: str
    pod: str
    model: str
    value: int


@dataclass
class TokenReading:
    """One source's series: ``{series_id: TokenSeries}``."""

    source: TokenSource
    series: dict[str, TokenSeries] = field(default_factory=dict)


def read_tokens(
    source: TokenSource,
    samples: Iterable[Sample],
    *,
    namespace_label: str = "namespace",
    pod_label: str = "pod",
) -> TokenReading:
    reading = TokenReading(source)
    for s in samples:
        sid = series_id({**s.labels, "__name__": source.source.metric})
        value = _int(s.value)
        prev = reading.series.get(sid)
        if prev is not None and prev.value >= value:
            continue
        reading.series[sid] = TokenSeries(
            namespace=s.labels.get(namespace_label, ""),
            pod=s.labels.get(pod_label, ""),
            model=s.labels.get(source.source.model_label, "") or "unknown",
            value=value,
        )
    return reading
