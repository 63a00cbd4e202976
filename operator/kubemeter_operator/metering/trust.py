"""Which counter samples metering may count (pure): the source checks of "metering trusts
no counter".

A GPU sample (either exporter counter) counts only when

1. its ``job`` label is the exporter's scrape job (``MeteringConfig.exporter_job``; None:
   any job, for simulations and benchmarks) -- reason ``job`` otherwise;
2. its ``instance`` label is the address of an exporter pod (``ExporterDirectory``, or an
   address metering verified earlier and remembers in its checkpoint) -- reason
   ``instance``; and that pod runs on the node the sample's ``node`` label names -- reason
   ``node`` (only when the cycle has an exporter directory);
3. its value is a counter value a usage record can hold: ``0 <= value <= MAX_COUNT``
   (10**15; a value above 2**63, say) -- reason ``value``; NaN and infinities never reach
   here (the Prometheus client drops them);
4. its namespace, pod and model labels fit a usage record -- reason ``labels``.

Token samples are checked for 3 and 4 only: their job is the PricePlan source's ``job``
label matcher when it has one (the query selects it), and their tenant comes from their
``namespace``/``pod`` labels (see :mod:`kubemeter_operator.metering.sources`).

A sample that fails is not counted (its series' checkpoint stays as it was) and is reported
as an :class:`UntrustedSeries`. Nothing here raises on bad input: one bad series never
stops metering of the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubemeter_exporter import contract
from kubemeter_operator.api.usage import MAX_COUNT
from kubemeter_operator.metering.prometheus import Sample

JOB = "job"
INSTANCE = "instance"
NODE = "node"
VALUE = "value"
LABELS = "labels"
REASONS = (JOB, INSTANCE, NODE, VALUE, LABELS)
"""Every reason a sample can be refused for (metric label values)."""

_MAX_NAMESPACE = 63
_MAX_POD = 253
_MAX_MODEL = 200


@dataclass(frozen=True, slots=True)
class UntrustedSeries:
    """A series with a metered metric's name that metering ignored, and why."""

    metric: str
    namespace: str
    pod: str
    job: str
    instance: str
    node: str
    reason: str
    tenant: str = ""
    """The tenant its namespace/pod labels claim (for an Event there); "" when none."""

    @property
    def message(self) -> str:
        what = {
            JOB: f"it was scraped by job {self.job!r}, not the exporter's",
            INSTANCE: f"its target {self.instance!r} is not an exporter pod",
            NODE: f"its node {self.node!r} is not the node of exporter target {self.instance!r}",
            VALUE: "its value is not a valid counter value",
            LABELS: "its labels do not fit a usage record",
        }.get(self.reason, self.reason)
        return (
            f"{self.metric} for {self.namespace or '<no namespace>'}/{self.pod or '<no pod>'} "
            f"ignored: {what}"
        )


def _labels_fit(labels: Mapping[str, str], namespace: str, pod: str, model: str) -> bool:
    return (
        len(labels.get(namespace, "")) <= _MAX_NAMESPACE
        and len(labels.get(pod, "")) <= _MAX_POD
        and len(labels.get(model, "")) <= _MAX_MODEL
    )


def reason(
    sample: Sample,
    *,
    job: str | None,
    nodes: Mapping[str, str] | None,
    model_label: str = contract.LABEL_GPU_MODEL,
    namespace_label: str = contract.LABEL_NAMESPACE,
    pod_label: str = contract.LABEL_POD,
) -> str:
    """Why ``sample`` cannot count ("" when it can). ``nodes``: instance -> node of the
    exporter pods (None: no node check)."""
    labels = sample.labels
    if job is not None and labels.get("job", "") != job:
        return JOB
    if nodes is not None:
        node = nodes.get(labels.get("instance", ""))
        if node is None:
            return INSTANCE
        if node != labels.get(contract.LABEL_NODE, ""):
            return NODE
    if not 0 <= sample.value <= MAX_COUNT:
        return VALUE
    if not _labels_fit(labels, namespace_label, pod_label, model_label):
        return LABELS
    return ""


def partition(
    metric: str,
    samples: Iterable[Sample],
    *,
    job: str | None = None,
    nodes: Mapping[str, str] | None = None,
    model_label: str = contract.LABEL_GPU_MODEL,
    namespace_label: str = contract.LABEL_NAMESPACE,
    pod_label: str = contract.LABEL_POD,
) -> tuple[list[Sample], list[UntrustedSeries]]:
    """The samples that count, and a report of those that do not."""
    trusted: list[Sample] = []
    untrusted: list[UntrustedSeries] = []
    for s in samples:
        why = reason(
            s, job=job, nodes=nodes, model_label=model_label,
            namespace_label=namespace_label, pod_label=pod_label,
        )  # fmt: skip
        if not why:
            trusted.append(s)
            continue
        labels = s.labels
        untrusted.append(
            UntrustedSeries(
                metric=metric,
                namespace=labels.get(namespace_label, ""),
                pod=labels.get(pod_label, ""),
                job=labels.get("job", ""),
                instance=labels.get("instance", ""),
                node=labels.get(contract.LABEL_NODE, ""),
                reason=why,
            )
        )
    return trusted, untrusted


__all__ = ["REASONS", "UntrustedSeries", "partition", "reason"]
