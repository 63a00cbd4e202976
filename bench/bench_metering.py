"""Benchmark: one metering cycle for 10,000 GPU pods across 100 tenants.

A synthetic exporter (bench/synthetic_exporter.py, in a child process) serves 10,000
series of each GPU counter with the contract's labels; a real Prometheus scrapes it every
second; the cycle reads it and writes to a real ledger (SQLite by default, ``--db URL`` for
PostgreSQL). Prints the metering cycle's time split into Prometheus query, compute and
ledger write, then the bill step of the same operator cycle (terms, period close check,
running statements of every tenant: `billing.biller.Biller.run`), and the operator
process's RSS. Targets (docs/PRODUCT.md): cycle <= 5 s, RSS <= 250 MB.

The cycle runs with the operator's counter checks (the exporter's scrape job, an exporter
pod serving each series on the series' node, physical bounds); ``--no-checks`` runs the
simpler peer without them, for the cost of the checks. With the checks every pod is on the
one node of the one exporter (the node check then passes for every series, as it does on a
real cluster where each node's exporter serves its own pods).

    .venv/bin/python bench/bench_metering.py [--pods 10000] [--tenants 100] [--db URL]
                                             [--no-checks]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import procstat
import synthetic_exporter
from kubemeter_operator.api.priceplan import PricePlan, PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import MeteringConfig, MeteringCycle
from kubemeter_operator.metering.exporters import ExporterDirectory, ExporterPod
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.prometheus import PrometheusClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from loader import prometheus


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--db", default=None, help="ledger URL (default: a temp SQLite file)")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--no-checks", action="store_true", help="meter without the trust checks")
    args = p.parse_args()

    per_ns = max(1, args.pods // args.tenants)
    gpu_pods = [
        ("node-000" if not args.no_checks else f"node-{i // 8:03d}", f"ns-{i // per_ns:03d}",
         f"pod-{i:05d}", f"uid-{i:05d}")
        for i in range(args.pods)
    ]  # fmt: skip
    port = prometheus.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="kubemeter-bench-"))
    prom = prometheus.PrometheusServer([f"127.0.0.1:{port}"], data_dir=tmp / "prom")
    child = synthetic_exporter.start(gpu_pods, port, tmp)
    try:
        prom.start()
        synthetic_exporter.wait_scraped(prom, args.pods, timeout=60)
        tenants = [
            Tenant.model_validate({
                "metadata": {"name": f"tenant-{t:03d}",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"pricePlanRef": {"name": "std"}, "namespaces": [f"ns-{t:03d}"],
                         **({"podSelector": {"matchLabels": {"team": "x"}}} if t % 2 else {})},
            })
            for t in range(args.tenants)
        ]  # fmt: skip
        plans = {
            "std": PricePlanSpec.model_validate({
                "currency": "USD",
                "meters": [{"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
                            "pricing": {"model": "flat", "unitPrice": "2"}}],
            })
        }  # fmt: skip
        pods = StaticPodDirectory(
            PodMeta(ns, name, uid, {"team": "x"}) for _node, ns, name, uid in gpu_pods
        )
        url = args.db or f"sqlite:///{tmp / 'ledger.db'}"
        ledger = Ledger.open(url)
        config = MeteringConfig(
            step=timedelta(seconds=2),
            lag=timedelta(seconds=1),
            max_window=timedelta(seconds=30),
            scrape_margin=timedelta(seconds=10),
        )
        directory = None
        if not args.no_checks:
            config = dataclasses.replace(
                config, exporter_job=prom.job, gpu_tolerance=timedelta(seconds=5),
                max_token_rate=1_000_000.0,
            )  # fmt: skip
            directory = ExporterDirectory([ExporterPod("exporter-0", "node-000",
                                                       ("127.0.0.1",), (port,))])  # fmt: skip
        cycle = MeteringCycle(ledger, PrometheusClient(prom.url), pods, config,
                              exporters=directory)  # fmt: skip
        biller = Biller(ledger)
        by_name = {t.name: t for t in tenants}
        priceplans = {"std": PricePlan.model_validate({"metadata": {"name": "std"},
                                                       "spec": plans["std"].to_api()})}  # fmt: skip
        checks = "none" if args.no_checks else "job, exporter pod on the node, bounds"
        print(f"pods={args.pods} tenants={args.tenants} ledger={ledger.dialect} checks: {checks}")
        print(f"{'cycle':>5} {'records':>8} {'total_s':>8} {'query_s':>8} {'compute_s':>9} "
              f"{'write_s':>8} {'bill_s':>7} {'rss_mb':>7} {'peak_mb':>7}")  # fmt: skip
        done = 0
        while done < args.cycles:
            start = time.perf_counter()
            result = cycle.run(tenants, plans, now=datetime.now(UTC))
            total = time.perf_counter() - start
            if result.window is None:
                time.sleep(0.2)
                continue
            done += 1
            bill_start = time.perf_counter()
            biller.run(datetime.now(UTC), by_name, priceplans, result.window.end)
            bill = time.perf_counter() - bill_start
            rss, peak = procstat.memory_mb()
            print(
                f"{done:>5} {result.accepted:>8} {total:>8.3f} {result.query_s:>8.3f} "
                f"{result.compute_s:>9.3f} {result.write_s:>8.3f} {bill:>7.3f} {rss:>7.1f} "
                f"{peak:>7.1f}"
            )
            time.sleep(2.1)
        ledger.close()
    finally:
        prom.close()
        child.terminate()
        child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
