"""``kubemeter-exporter``: the GPU exporter's command line.

The exporter talks to NVML, the kubelet's pod-resources socket and ``/proc``; it never
talks to the Kubernetes API. ``--kubeconfig`` and ``--no-kube`` are accepted for
compatibility with older command lines and do nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from kubemeter_exporter import __version__
from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import Clock, ScaledClock, SystemClock
from kubemeter_exporter.collector import Collector, SamplerThread, default_cap_s
from kubemeter_exporter.nvml.base import NvmlBackend
from kubemeter_exporter.podresources.client import (
    DEFAULT_SOCKET,
    PodResourcesClient,
    PodResourcesLister,
)
from kubemeter_exporter.server import ExporterServer

log = logging.getLogger("kubemeter_exporter")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``"5s"``, ``"500ms"``, ``"1m"`` or ``"5"`` (seconds) -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 5s, 500ms, 1m)")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    seconds = value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return seconds


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants host:port, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubemeter-exporter",
        description="Per-pod GPU time counters from NVML, served for Prometheus.",
    )
    p.add_argument(
        "--simulate",
        metavar="SCENARIO",
        help="run the simulated NVML backend driven by this scenario YAML",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second with --simulate (default 1)",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("0.0.0.0", 9400),
        help="host:port to serve /metrics and /healthz on (default 0.0.0.0:9400)",
    )
    p.add_argument(
        "--interval",
        type=parse_duration,
        default=5.0,
        help="sampling interval, e.g. 5s or 500ms (default 5s)",
    )
    p.add_argument(
        "--max-billable",
        type=parse_duration,
        default=None,
        help="longest interval billed at once; the rest counts as a gap "
        "(default max(2x --interval, --interval + 1s))",
    )
    p.add_argument(
        "--proc-root",
        default=None,
        help="where /proc is mounted (default /proc; a temp tree with --simulate)",
    )
    p.add_argument(
        "--pod-resources-socket",
        default=DEFAULT_SOCKET,
        help=f"kubelet pod-resources socket (default {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default $NODE_NAME, the scenario's node, or the hostname)",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="ignored (kept for old command lines): the exporter reads no Kubernetes API",
    )
    p.add_argument(
        "--no-kube",
        action="store_true",
        help="ignored (kept for old command lines): the exporter never reads the API server",
    )
    p.add_argument(
        "--series-retention",
        type=parse_duration,
        default=3600.0,
        help="keep flat series of pods that released a GPU this long (default 1h)",
    )
    p.add_argument(
        "--no-process-metrics", action="store_true", help="do not export per-process gauges"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def build(args: argparse.Namespace) -> tuple[Collector, list[object]]:
    """Create the collector and the objects to close on exit."""
    clock: Clock
    backend: NvmlBackend
    lister: PodResourcesLister
    closers: list[object] = []
    interval = float(args.interval)
    if args.kubeconfig:
        log.info("--kubeconfig is ignored: pods are named by the kubelet and cgroups only")
    if args.simulate:
        from kubemeter_exporter.scenario import Scenario
        from kubemeter_exporter.simulation import SimulatedNode

        scenario = Scenario.load(args.simulate)
        clock = ScaledClock(args.speed)
        node_name = args.node_name or scenario.node
        sim = SimulatedNode(scenario, clock, proc_root=args.proc_root)
        closers.append(sim)
        backend, lister = sim.backend, sim.pod_resources
        proc_root = str(sim.proc_root)
        max_billable_ms = round(1000 * (args.max_billable or default_cap_s(interval)) * args.speed)
    else:
        from kubemeter_exporter.nvml.real import RealNvml

        clock = SystemClock()
        node_name = args.node_name or socket.gethostname()
        backend = RealNvml()
        client = PodResourcesClient(args.pod_resources_socket)
        closers.append(client)
        lister = client
        proc_root = args.proc_root or "/proc"
        max_billable_ms = round(1000 * (args.max_billable or default_cap_s(interval)))
    collector = Collector(
        backend,
        lister,
        None,
        ProcCgroupReader(proc_root),
        node=node_name,
        interval_s=interval,
        clock=clock,
        max_billable_ms=max_billable_ms,
        series_retention_s=args.series_retention,
        process_metrics=not args.no_process_metrics,
    )
    return collector, closers


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        collector, closers = build(args)
    except Exception as exc:
        log.error("cannot start: %s", exc)
        return 2
    host, port = args.listen
    server = ExporterServer(collector, host, port)
    sampler = SamplerThread(collector, float(args.interval))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    sampler.start()
    log.info(
        "serving http://%s:%d/metrics (node=%s backend=%s instance=%s interval=%ss)",
        host,
        server.port,
        collector.node,
        collector.backend.name,
        collector.instance,
        args.interval,
    )
    stop.wait()
    log.info("stopping")
    sampler.stop()
    server.stop()
    for obj in closers:
        for name in ("stop", "close"):
            fn = getattr(obj, name, None)
            if callable(fn):
                fn()
    with contextlib.suppress(Exception):
        collector.backend.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
