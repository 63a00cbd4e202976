#!/usr/bin/env python3
"""Simulated GPUs that follow the API server: the exporter's counters for live pods.

`make demo` runs GPU Deployments whose pods come and go (budget enforcement scales them to
0 and back). The exporter's `--simulate` mode serves a fixed scenario; this serves the
contract's two GPU counters (`kubemeter_exporter.contract`) for every Running pod in the
given namespaces that asks for `nvidia.com/gpu`, one series per GPU, as the exporter would
on a node: allocated milliseconds grow `--speed` times faster than wall time from when the
pod was first seen, active milliseconds at `--utilisation` of that. A pod that is gone has
no series any more (the operator's tombstones take it from there); a new pod starts at 0.

    python hack/live_gpus.py --kubeconfig K --namespaces acme-prod --port 9401 --speed 60
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import kubernetes
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kubemeter_exporter import contract

GPU_MODEL = "NVIDIA H100 80GB HBM3"
INSTANCE = "live-demo"


@dataclass(frozen=True)
class Held:
    """One GPU a pod holds, since `since` (wall clock)."""

    labels: tuple[str, ...]
    since: float


class LiveGpus(Collector):
    def __init__(self, speed: int, utilisation: Fraction) -> None:
        self.speed = speed
        self.utilisation = utilisation
        self.held: dict[tuple[str, int], Held] = {}
        self.lock = threading.Lock()

    def sync(self, pods: list[Any]) -> None:
        """The GPUs of the Running pods now (others vanish)."""
        now = time.time()
        seen: dict[tuple[str, int], Held] = {}
        for pod in pods:
            if pod.status.phase != "Running" or pod.metadata.deletion_timestamp:
                continue
            gpus = 0
            for c in pod.spec.containers:
                limits = (c.resources.limits or {}) if c.resources else {}
                gpus += int(limits.get("nvidia.com/gpu", 0))
            for i in range(gpus):
                key = (pod.metadata.uid, i)
                values = {
                    contract.LABEL_NODE: pod.spec.node_name or "",
                    contract.LABEL_GPU_UUID: f"GPU-live-{pod.metadata.uid[:8]}-{i}",
                    contract.LABEL_GPU_MODEL: GPU_MODEL,
                    contract.LABEL_MIG_PROFILE: "",
                    contract.LABEL_NAMESPACE: pod.metadata.namespace,
                    contract.LABEL_POD: pod.metadata.name,
                    contract.LABEL_POD_UID: pod.metadata.uid,
                    contract.LABEL_EXPORTER_INSTANCE: INSTANCE,
                }
                with self.lock:
                    before = self.held.get(key)
                labels = tuple(values[label] for label in contract.COUNTER_LABELS)
                seen[key] = before or Held(labels, now)
        with self.lock:
            self.held = seen

    def collect(self) -> Iterator[CounterMetricFamily]:
        allocated, active = contract.GPU_ALLOCATED_MS, contract.GPU_ACTIVE_MS
        alloc = CounterMetricFamily(allocated.family, allocated.help, labels=allocated.labels)
        act = CounterMetricFamily(active.family, active.help, labels=active.labels)
        now = time.time()
        with self.lock:
            held = list(self.held.values())
        for h in held:
            ms = int((now - h.since) * 1000 * self.speed)
            alloc.add_metric(list(h.labels), ms)
            act.add_metric(list(h.labels), int(ms * self.utilisation))
        yield alloc
        yield act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespaces", required=True, help="comma-separated")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--speed", type=int, default=60)
    parser.add_argument("--utilisation", default="0.8")
    args = parser.parse_args()
    core = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    )
    gpus = LiveGpus(args.speed, Fraction(args.utilisation))
    registry = CollectorRegistry()
    registry.register(gpus)
    start_http_server(args.port, addr="127.0.0.1", registry=registry)
    namespaces = [ns.strip() for ns in args.namespaces.split(",") if ns.strip()]
    while True:
        pods: list[Any] = []
        try:
            for ns in namespaces:
                pods += core.list_namespaced_pod(ns, _request_timeout=10).items
            gpus.sync(pods)
        except Exception as exc:  # the API server briefly away: keep serving what we have
            print(f"live_gpus: {exc}", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
