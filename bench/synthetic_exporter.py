"""A synthetic kubemeter exporter for the benchmarks: the contract's GPU counters, one GPU a pod.

It serves one series per pod of `kubemeter_gpu_allocated_milliseconds_total` and
`kubemeter_gpu_active_milliseconds_total` with the contract's labels (`COUNTER_LABELS`), as
the real exporter would for pods that hold one whole GPU each. Allocated ms grows with wall
time since the server started (plus the pod's index, so series differ), active ms at half
that rate. bench_metering.py and bench_operator_scale.py use it to give a real Prometheus,
and through it the operator, thousands of series without simulating GPUs.

It runs in a child process (`start`), so serving 10,000 series costs the measured process
nothing, and it imports nothing of the operator.

    python bench/synthetic_exporter.py --port 9400 --pods pods.json  # [[node, ns, name, uid]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kubemeter_exporter import contract

if TYPE_CHECKING:
    from support.prometheus import PrometheusServer

GPU_MODEL = "NVIDIA H100 80GB HBM3"  # the gpu_model label of every series
INSTANCE = "bench"  # the exporter_instance label


def counter_labels(pods: Sequence[Sequence[str]]) -> list[list[str]]:
    """The label values (in `COUNTER_LABELS` order) of each pod's series; pod i holds
    `GPU-<i>`. Each pod is [node, namespace, name, uid]."""
    out = []
    for i, (node, namespace, name, uid) in enumerate(pods):
        values = {
            contract.LABEL_NODE: node,
            contract.LABEL_GPU_UUID: f"GPU-{i:08d}",
            contract.LABEL_GPU_MODEL: GPU_MODEL,
            contract.LABEL_MIG_PROFILE: "",
            contract.LABEL_NAMESPACE: namespace,
            contract.LABEL_POD: name,
            contract.LABEL_POD_UID: uid,
            contract.LABEL_EXPORTER_INSTANCE: INSTANCE,
        }
        out.append([values[label] for label in contract.COUNTER_LABELS])
    return out


class SyntheticCounters(Collector):
    """The two GPU counters for fixed label values, computed from wall time at each scrape."""

    def __init__(self, labels: list[list[str]]) -> None:
        self.labels = labels
        self.t0 = time.time()

    def collect(self) -> Iterator[CounterMetricFamily]:
        ms = int((time.time() - self.t0) * 1000)
        allocated, active = contract.GPU_ALLOCATED_MS, contract.GPU_ACTIVE_MS
        alloc = CounterMetricFamily(allocated.family, allocated.help, labels=allocated.labels)
        act = CounterMetricFamily(active.family, active.help, labels=active.labels)
        for i, values in enumerate(self.labels):
            alloc.add_metric(values, ms + i)
            act.add_metric(values, (ms + i) // 2)
        yield alloc
        yield act


def serve(port: int, pods: Sequence[Sequence[str]]) -> None:
    """Serve the pods' counters on 127.0.0.1:`port` until the process is stopped."""
    registry = CollectorRegistry()
    registry.register(SyntheticCounters(counter_labels(pods)))
    start_http_server(port, addr="127.0.0.1", registry=registry)
    while True:
        time.sleep(3600)


def start(pods: Sequence[Sequence[str]], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Serve `pods` on 127.0.0.1:`port` from a child process in its own session (its pod
    list and log in `workdir`); it runs until the caller stops it."""
    pod_file = workdir / "synthetic-pods.json"
    pod_file.write_text(json.dumps([list(pod) for pod in pods]))
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--pods"]
    with open(workdir / "synthetic-exporter.log", "wb") as log:
        return subprocess.Popen(
            [*argv, str(pod_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_scraped(prom: PrometheusServer, pods: int, timeout: float = 90) -> None:
    """Wait until `prom` scrapes its targets and holds an allocated-ms series for each pod."""
    prom.wait_for_targets(timeout=timeout)
    prom.wait_for(
        f"count({contract.GPU_ALLOCATED_MS.name})",
        lambda result: bool(result) and int(float(result[0]["value"][1])) == pods,
        timeout=timeout,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pods", type=Path, required=True, help="JSON: [[node, ns, name, uid]]")
    args = parser.parse_args()
    serve(args.port, json.loads(args.pods.read_text()))


if __name__ == "__main__":
    main()
