"""The exporter's metric contract: every metric name, type, label set and help text.

This module is the single source of truth for what the exporter serves on ``/metrics``.
The operator's PromQL queries import these constants; do not rename a metric or a label
without changing both sides.

Semantics the consumers rely on
-------------------------------
* ``kubemeter_gpu_allocated_milliseconds_total`` and ``kubemeter_gpu_active_milliseconds_total``
  are integer counters of milliseconds, one series per (GPU or MIG instance, pod) and per
  ``exporter_instance``.  ``exporter_instance`` is a random id chosen when the exporter
  process starts, so a restart creates *new* series that start from 0: a consumer computes
  deltas per series and treats a series it has not seen before as starting at 0.
* Allocated ms: wall time (monotonic clock) the pod held the device, as seen at each sample.
  Sampling interval ``(t_prev, t_now]`` is billed to the pods that hold the device at
  ``t_now`` (right-point rule). A pod that holds several time-slicing replicas
  (``<uuid>::N``) of one GPU is billed once for that GPU.
* Pod labels. ``namespace`` and ``pod`` come from the kubelet's pod-resources API (the pods
  holding the device), ``pod_uid`` from the cgroups of the pod's processes; the exporter
  reads no Kubernetes API and joins the two itself (``binding.py``). A pod holding the
  device has ``pod_uid=""`` until its processes have been told apart from other pods',
  then a new series with its ``pod_uid`` continues (sum the two). Processes of a pod that
  holds no allocation on the GPU (e.g. ``NVIDIA_VISIBLE_DEVICES=all``) are billed to
  ``namespace="" pod="" pod_uid="<uid>"`` (consumers name the pod by its UID); processes of
  no pod to the unattributed series (``namespace=""``, ``pod=""``, ``pod_uid=""``).
  Processes that may belong to one of several pods sharing the device (time-slicing) and
  cannot be told apart are billed to no series (their pod's allocated time is billed by
  name; its active time waits until they can be told apart) and counted in
  ``kubemeter_exporter_unattributed_processes``. A pod's time is in one series at a time,
  except for a pod whose processes also run on GPUs it holds no allocation on: it is billed
  by name for what it holds and by UID alone where it runs.
* Active ms: allocated ms x the pod's SM share over the interval, where
  ``share = min(1, sum over the pod's processes on the device of mean(smUtil samples)/100)``
  with samples from ``nvmlDeviceGetProcessUtilization`` (``util_source="process"``).
  When per-process utilisation is not supported the device utilisation is split between
  the pods with processes on it in proportion to their process count
  (``util_source="device"``); when neither is available (e.g. MIG instances) a pod with
  at least one running process on the device counts as fully active
  (``util_source="presence"``). The fractional remainder is carried per series so the
  integer counter never drifts.
* A sampling interval longer than the exporter's ``max_billable_ms`` (default max(2x the
  configured interval, the interval + 1 s)) is billed only up to that cap; the rest is added to
  ``kubemeter_exporter_sampling_gap_milliseconds_total`` (usage that was not seen is not
  billed).
* Series of pods that released a device stay (flat) for ``--series-retention`` (default 1 h)
  and are then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "info"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of the contract.

    ``name`` is the exposed sample name (counters include the ``_total`` suffix).
    ``family`` is the name used with prometheus_client metric families (no ``_total``).
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]

    @property
    def family(self) -> str:
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        if self.type == "info" and self.name.endswith("_info"):
            return self.name[: -len("_info")]
        return self.name


# ---------------------------------------------------------------- label names
LABEL_NODE: Final = "node"
LABEL_GPU_UUID: Final = "gpu_uuid"  # GPU UUID, or MIG instance UUID ("MIG-...")
LABEL_GPU_INDEX: Final = "gpu_index"
LABEL_GPU_MODEL: Final = "gpu_model"  # NVML product name, e.g. "NVIDIA H100 80GB HBM3"
LABEL_MIG_PROFILE: Final = "mig_profile"  # e.g. "1g.10gb"; "" for a whole GPU
LABEL_PARENT_UUID: Final = "parent_uuid"  # physical GPU of a MIG instance; "" otherwise
LABEL_UTIL_SOURCE: Final = "util_source"  # process | device | presence
LABEL_NAMESPACE: Final = "namespace"
LABEL_POD: Final = "pod"
LABEL_POD_UID: Final = "pod_uid"
LABEL_PID: Final = "pid"
LABEL_EXPORTER_INSTANCE: Final = "exporter_instance"
LABEL_BACKEND: Final = "backend"  # nvml | simulated
LABEL_VERSION: Final = "version"
LABEL_REASON: Final = "reason"
LABEL_SOURCE: Final = "source"  # pod_resources | internal

UTIL_SOURCE_PROCESS: Final = "process"
UTIL_SOURCE_DEVICE: Final = "device"
UTIL_SOURCE_PRESENCE: Final = "presence"

# Labels shared by every per-(device, pod) series.
POD_DEVICE_LABELS: Final[tuple[str, ...]] = (
    LABEL_NODE,
    LABEL_GPU_UUID,
    LABEL_GPU_MODEL,
    LABEL_MIG_PROFILE,
    LABEL_NAMESPACE,
    LABEL_POD,
    LABEL_POD_UID,
)
COUNTER_LABELS: Final[tuple[str, ...]] = (*POD_DEVICE_LABELS, LABEL_EXPORTER_INSTANCE)

# ---------------------------------------------------------------- usage metrics
GPU_ALLOCATED_MS: Final = MetricSpec(
    name="kubemeter_gpu_allocated_milliseconds_total",
    type="counter",
    help="Wall-clock milliseconds the pod held the GPU or MIG instance (integer, monotonic "
    "per exporter_instance).",
    labels=COUNTER_LABELS,
)
GPU_ACTIVE_MS: Final = MetricSpec(
    name="kubemeter_gpu_active_milliseconds_total",
    type="counter",
    help="Allocated milliseconds weighted by the pod's share of SM utilisation (integer, "
    "monotonic per exporter_instance).",
    labels=COUNTER_LABELS,
)
GPU_MEMORY_USED: Final = MetricSpec(
    name="kubemeter_gpu_memory_used_bytes",
    type="gauge",
    help="GPU memory used by the pod's processes on the device at the last sample.",
    labels=POD_DEVICE_LABELS,
)
GPU_INFO: Final = MetricSpec(
    name="kubemeter_gpu_info",
    type="info",
    help="One series per GPU and MIG instance on the node (value 1).",
    labels=(
        LABEL_NODE,
        LABEL_GPU_UUID,
        LABEL_GPU_INDEX,
        LABEL_GPU_MODEL,
        LABEL_MIG_PROFILE,
        LABEL_PARENT_UUID,
        LABEL_UTIL_SOURCE,
    ),
)
GPU_UTILIZATION: Final = MetricSpec(
    name="kubemeter_gpu_utilization_percent",
    type="gauge",
    help="Device utilisation reported by NVML at the last sample (percent of time a kernel ran).",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)
GPU_DEVICE_MEMORY_USED: Final = MetricSpec(
    name="kubemeter_gpu_device_memory_used_bytes",
    type="gauge",
    help="Memory used on the GPU or MIG instance at the last sample.",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)
GPU_DEVICE_MEMORY_TOTAL: Final = MetricSpec(
    name="kubemeter_gpu_device_memory_total_bytes",
    type="gauge",
    help="Total memory of the GPU or MIG instance.",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)
PROCESS_SM_UTIL: Final = MetricSpec(
    name="kubemeter_gpu_process_sm_utilization_percent",
    type="gauge",
    help="Mean SM utilisation of a GPU process over the last sampling interval.",
    labels=(LABEL_NODE, LABEL_GPU_UUID, LABEL_PID, LABEL_NAMESPACE, LABEL_POD, LABEL_POD_UID),
)
PROCESS_MEMORY_USED: Final = MetricSpec(
    name="kubemeter_gpu_process_memory_used_bytes",
    type="gauge",
    help="GPU memory used by a GPU process at the last sample.",
    labels=(LABEL_NODE, LABEL_GPU_UUID, LABEL_PID, LABEL_NAMESPACE, LABEL_POD, LABEL_POD_UID),
)

# ---------------------------------------------------------------- exporter health
EXPORTER_INFO: Final = MetricSpec(
    name="kubemeter_exporter_info",
    type="info",
    help="The running exporter; exporter_instance changes on every restart (value 1).",
    labels=(LABEL_NODE, LABEL_EXPORTER_INSTANCE, LABEL_BACKEND, LABEL_VERSION),
)
EXPORTER_START_TIME: Final = MetricSpec(
    name="kubemeter_exporter_start_time_seconds",
    type="gauge",
    help="Unix time the exporter instance started.",
    labels=(LABEL_NODE, LABEL_EXPORTER_INSTANCE),
)
EXPORTER_LAST_SAMPLE: Final = MetricSpec(
    name="kubemeter_exporter_last_sample_timestamp_seconds",
    type="gauge",
    help="Unix time of the last successful NVML sample (0 before the first).",
    labels=(LABEL_NODE,),
)
EXPORTER_SAMPLES: Final = MetricSpec(
    name="kubemeter_exporter_samples_total",
    type="counter",
    help="Sampling rounds completed by this exporter instance.",
    labels=(LABEL_NODE, LABEL_EXPORTER_INSTANCE),
)
EXPORTER_NVML_UP: Final = MetricSpec(
    name="kubemeter_exporter_nvml_up",
    type="gauge",
    help="1 when NVML is initialised and the last sample succeeded, 0 otherwise.",
    labels=(LABEL_NODE,),
)
EXPORTER_NVML_ERRORS: Final = MetricSpec(
    name="kubemeter_exporter_nvml_errors_total",
    type="counter",
    help="NVML errors by reason (init, library_not_found, gpu_lost, not_supported, ...).",
    labels=(LABEL_NODE, LABEL_REASON),
)
EXPORTER_SOURCE_ERRORS: Final = MetricSpec(
    name="kubemeter_exporter_source_errors_total",
    type="counter",
    help="Errors reading attribution sources (pod_resources, internal).",
    labels=(LABEL_NODE, LABEL_SOURCE),
)
EXPORTER_GAPS: Final = MetricSpec(
    name="kubemeter_exporter_sampling_gaps_total",
    type="counter",
    help="Sampling intervals of a device longer than the billable cap (--max-billable).",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)
EXPORTER_GAP_MS: Final = MetricSpec(
    name="kubemeter_exporter_sampling_gap_milliseconds_total",
    type="counter",
    help="Milliseconds of sampling gaps beyond the billable cap, not billed to any pod.",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)
EXPORTER_COLLECTION_SECONDS: Final = MetricSpec(
    name="kubemeter_exporter_collection_duration_seconds",
    type="gauge",
    help="Wall time of the last sampling round.",
    labels=(LABEL_NODE,),
)
EXPORTER_UNATTRIBUTED_PROCESSES: Final = MetricSpec(
    name="kubemeter_exporter_unattributed_processes",
    type="gauge",
    help="GPU processes at the last sample not billed to a pod: of no pod, or of a pod that "
    "could not be told apart from the others sharing the device.",
    labels=(LABEL_NODE, LABEL_GPU_UUID),
)

ALL_METRICS: Final[tuple[MetricSpec, ...]] = (
    GPU_ALLOCATED_MS,
    GPU_ACTIVE_MS,
    GPU_MEMORY_USED,
    GPU_INFO,
    GPU_UTILIZATION,
    GPU_DEVICE_MEMORY_USED,
    GPU_DEVICE_MEMORY_TOTAL,
    PROCESS_SM_UTIL,
    PROCESS_MEMORY_USED,
    EXPORTER_INFO,
    EXPORTER_START_TIME,
    EXPORTER_LAST_SAMPLE,
    EXPORTER_SAMPLES,
    EXPORTER_NVML_UP,
    EXPORTER_NVML_ERRORS,
    EXPORTER_SOURCE_ERRORS,
    EXPORTER_GAPS,
    EXPORTER_GAP_MS,
    EXPORTER_COLLECTION_SECONDS,
    EXPORTER_UNATTRIBUTED_PROCESSES,
)
