"""Metering trusts no counter, on a real Prometheus: a tenant's pod that serves the exporter's
metric names, scraped by a `kubernetes-pods`-style job with `honor_labels: true`, bills
nothing -- not with its own job, not with a forged `job` label, not with a forged `job` and
`instance` of the real exporter but another node -- while the exporter job's series are
billed exactly (the ledger holds the last value Prometheus scraped from the exporter).

Both targets are small HTTP servers in this process whose counters grow with wall time (the
exporter's is the contract's series for one pod holding one GPU), so the physics bounds are
on as the operator runs them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubemeter_exporter import contract
from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import CycleResult, MeteringConfig, MeteringCycle
from kubemeter_operator.metering.exporters import ExporterDirectory, ExporterPod
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.prometheus import PrometheusClient
from kubemeter_operator.usage.periods import Period

from support.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

ALLOC = contract.GPU_ALLOCATED_MS.name
ACTIVE = contract.GPU_ACTIVE_MS.name
EXPORTER_JOB = "kubemeter-exporter"
H100 = "NVIDIA H100 80GB HBM3"
VICTIM = {
    "node": "gpu-node-1", "gpu_uuid": "GPU-1", "gpu_model": H100, "mig_profile": "",
    "namespace": "victim", "pod": "train-0", "pod_uid": "uid-victim-train-0",
    "exporter_instance": "exp-1",
}  # fmt: skip
CONFIG = MeteringConfig(
    step=timedelta(seconds=1),
    lag=timedelta(seconds=2),
    max_window=timedelta(seconds=4),
    scrape_margin=timedelta(seconds=5),
    initial_lookback=timedelta(minutes=5),
    prune_after=timedelta(hours=1),
    exporter_job=EXPORTER_JOB,
    gpu_tolerance=timedelta(seconds=5),
    max_token_rate=1e6,
)
PLANS = {
    "std": PricePlanSpec.model_validate({
        "currency": "USD",
        "meters": [{"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
                    "pricing": {"model": "flat", "unitPrice": "2"}}],
    })
}  # fmt: skip
TENANTS = [
    Tenant.model_validate({
        "metadata": {"name": "victim", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"pricePlanRef": {"name": "std"}, "namespaces": ["victim"]},
    })
]  # fmt: skip

Series = list[tuple[str, dict[str, str], int]]


def exposition(series: Series) -> bytes:
    lines = []
    for name, labels, value in series:
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{pairs}}} {value}")
    return ("\n".join(lines) + "\n").encode()


class Target:
    """A /metrics endpoint whose series are computed at each scrape."""

    def __init__(self, series: Callable[[], Series]) -> None:
        produce = series

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition(produce())
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Held:
    """The victim's GPU: held from `start()` to `stop()`, in wall-clock milliseconds."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.stopped: float | None = None

    def start(self) -> None:
        self.started = time.time()

    def stop(self) -> None:
        self.stopped = time.time()

    def ms(self) -> int:
        if self.started is None:
            return 0
        return int(((self.stopped or time.time()) - self.started) * 1000)


@pytest.fixture
def targets() -> Iterator[tuple[Held, Target, Target]]:
    held = Held()

    def exporter() -> Series:
        ms = held.ms()
        return [(ALLOC, VICTIM, ms), (ACTIVE, VICTIM, ms // 2)]

    real = Target(exporter)

    def attacker() -> Series:
        ms = held.ms()
        big = 10 * ms + 3_600_000
        forged_job = {**VICTIM, "job": EXPORTER_JOB, "exporter_instance": "evil-1"}
        forged_node = {**VICTIM, "job": EXPORTER_JOB, "instance": real.address,
                       "node": "gpu-node-2", "exporter_instance": "evil-2"}  # fmt: skip
        return [
            (ALLOC, VICTIM, big),  # the victim's own series, inflated, from another job
            (ACTIVE, VICTIM, big),
            (ALLOC, forged_job, big),  # passes the job check; its target is no exporter
            (ACTIVE, forged_job, big),
            (ALLOC, forged_node, big),  # the exporter's address, but another node
            (ACTIVE, forged_node, big),
        ]

    spoofer = Target(attacker)
    yield held, real, spoofer
    real.close()
    spoofer.close()


def gpu_totals(ledger: Ledger) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for period in {
        Period.of(datetime.now(UTC) - timedelta(minutes=5)),
        Period.of(datetime.now(UTC)),
    }:
        for tenant, totals in ledger.all_period_totals(period).items():
            for key, q in totals.items():
                if key.kind == "gpu":
                    a, b = out.get(tenant, (0, 0))
                    out[tenant] = (a + q.allocated_ms, b + q.active_ms)
    return out


def meter_until(
    cycle: MeteringCycle, done: Callable[[list[CycleResult]], bool]
) -> list[CycleResult]:
    results: list[CycleResult] = []
    deadline = time.monotonic() + 60
    while not done(results):
        assert time.monotonic() < deadline, "metering did not get there in time"
        r = cycle.run(TENANTS, PLANS)
        if r.window is not None:
            results.append(r)
        if not r.behind:
            time.sleep(0.2)
    return results


def test_spoofed_exporter_series_bill_nothing_and_the_exporter_bills_exactly(
    targets: tuple[Held, Target, Target], prometheus_factory: Any, tmp_path: Path
) -> None:
    held, real, spoofer = targets
    prom: PrometheusServer = prometheus_factory(
        [real.address, spoofer.address],
        scrape_configs=[
            {"job_name": EXPORTER_JOB, "honor_labels": True,
             "static_configs": [{"targets": [real.address]}]},
            {"job_name": "kubernetes-pods", "honor_labels": True,
             "static_configs": [{"targets": [spoofer.address]}]},
        ],
    )  # fmt: skip
    prom.wait_for_targets()
    prom.wait_for(f"count({ALLOC})", lambda r: bool(r) and float(r[0]["value"][1]) == 4)
    directory = ExporterDirectory(
        [ExporterPod("kubemeter-exporter-abcde", "gpu-node-1", ("127.0.0.1",), (real.port,))]
    )
    registry = CollectorRegistry()
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    cycle = MeteringCycle(
        ledger, PrometheusClient(prom.url), StaticPodDirectory(
            [PodMeta("victim", "train-0", "uid-victim-train-0")]
        ), CONFIG, metrics=MeteringMetrics(registry), exporters=directory,
    )  # fmt: skip
    try:
        results = meter_until(cycle, bool)  # the metering start: a baseline of 0
        held.start()
        results += meter_until(cycle, lambda _: held.ms() > 6000)
        held.stop()
        final = held.ms()
        real_series = (
            f'{ALLOC}{{job="{EXPORTER_JOB}",instance="{real.address}",exporter_instance="exp-1"}}'
        )
        prom.wait_for(real_series, lambda r: bool(r) and int(float(r[0]["value"][1])) == final)
        target = datetime.now(UTC) + timedelta(seconds=0.5)
        results += meter_until(
            cycle, lambda rs: bool(rs) and rs[-1].window is not None and rs[-1].window.end >= target
        )
        assert gpu_totals(ledger) == {"victim": (final, final // 2)}
        assert all(not r.quarantined for r in results)
        reasons = {u.reason: u for r in results for u in r.untrusted}
        assert set(reasons) == {"job", "instance", "node"}
        assert reasons["job"].job == "kubernetes-pods"
        assert reasons["instance"].instance == spoofer.address
        assert reasons["node"].node == "gpu-node-2"
        assert {u.tenant for u in reasons.values()} == {"victim"}
        for reason in ("job", "instance", "node"):
            assert (
                registry.get_sample_value("kubemeter_metering_untrusted_series", {"reason": reason})
                == 1
            )
            reads = registry.get_sample_value(
                "kubemeter_metering_untrusted_reads_total", {"reason": reason}
            )
            assert reads == sum(r.untrusted_counts.get(reason, 0) for r in results)
            assert reads > 3  # every window's read counts them again
    finally:
        ledger.close()
