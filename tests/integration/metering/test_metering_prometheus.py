"""Metering end to end on real components: the simulated exporter (a subprocess), a real
Prometheus scraping it every second, and a real ledger (SQLite; PostgreSQL too where the
``support.postgres`` plugin is available).

The metering layer must be exact: the ledger's GPU milliseconds per tenant equal the sum
of the exporter's final counter values for that tenant's pods, through restarts of the
metering process, crashes between the Prometheus read and the ledger write, Prometheus
outages and exporter restarts. Against the scenario's own truth (allocation lengths) the
difference is bounded by the exporter's sampling (right-point rule, one 20 ms sample per
allocation edge) and must stay within 0.1 %.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubemeter_exporter import contract
from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import TransientError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import CycleResult, MeteringConfig, MeteringCycle
from kubemeter_operator.metering.loop import MeteringLoop
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.prometheus import PrometheusClient
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.tenancy import UNASSIGNED

from support.prometheus import PrometheusServer, free_port

pytestmark = pytest.mark.integration

END_S = 100.0
"""Simulated seconds until every allocation has ended."""
SPEED = 5.0
"""Simulated seconds per real second."""
END_REAL = END_S / SPEED

H100 = "NVIDIA H100 80GB HBM3"
L4 = "NVIDIA L4"
A100 = "NVIDIA A100-SXM4-80GB"
G1 = "GPU-11111111-1111-1111-1111-111111111111"
G2 = "GPU-22222222-2222-2222-2222-222222222222"
G3 = "GPU-33333333-3333-3333-3333-333333333333"
G4 = "GPU-44444444-4444-4444-4444-444444444444"
MIG_3G = "MIG-44444444-aaaa-aaaa-aaaa-000000000001"
MIG_1G = "MIG-44444444-aaaa-aaaa-aaaa-000000000002"


def scenario(end: float) -> dict[str, Any]:
    """Five pods whose GPU allocations all end by ``end`` (simulated seconds)."""

    def pod(
        ns: str,
        name: str,
        n: int,
        labels: dict[str, str],
        devices: list[str],
        start: float,
        stop: float,
    ) -> dict[str, Any]:
        return {
            "namespace": ns, "name": name, "uid": f"00000000-0000-4000-8000-{n:012d}",
            "labels": labels, "allocations": [{"devices": devices, "start": start, "end": stop}],
        }  # fmt: skip

    return {
        "node": "metering-node",
        "gpus": [
            {"uuid": G1, "model": H100},
            {"uuid": G2, "model": H100},
            {"uuid": G3, "model": L4},
            {
                "uuid": G4,
                "model": A100,
                "mig": [
                    {
                        "uuid": MIG_3G,
                        "profile": "3g.40gb",
                        "memory_mib": 40192,
                        "gpu_instance_id": 1,
                    },
                    {
                        "uuid": MIG_1G,
                        "profile": "1g.10gb",
                        "memory_mib": 9728,
                        "gpu_instance_id": 9,
                    },
                ],
            },
        ],
        "pods": [
            pod("team-a", "trainer-0", 1, {"app": "trainer"}, [G1, G2], 10, end),
            pod("team-a", "batch", 2, {"app": "batch"}, [MIG_3G], 12, end * 0.6),
            pod("team-b", "infer-0", 3, {"app": "infer"}, [G3], 10, end),
            pod("team-b", "web", 4, {"app": "web"}, [MIG_1G], 11, end * 0.8),
            pod("team-d", "notebook", 5, {}, [f"{G3}::1"], 10, end),
        ],
        "processes": [
            {
                "pid": 101,
                "pod": "team-a/trainer-0",
                "device": G1,
                "sm_util": 80,
                "start": 10,
                "end": end,
            },
            {
                "pid": 102,
                "pod": "team-a/trainer-0",
                "device": G2,
                "sm_util": 40,
                "start": 10,
                "end": end,
            },
            {
                "pid": 103,
                "pod": "team-b/infer-0",
                "device": G3,
                "sm_util": 30,
                "start": 10,
                "end": end,
            },
            {
                "pid": 104,
                "pod": "team-d/notebook",
                "device": G3,
                "sm_util": 20,
                "start": 10,
                "end": end,
            },
        ],
    }


def tenants() -> list[Tenant]:
    """acme owns team-a; beta owns team-b's app=infer pods; late also claims team-a
    (conflict: created later); team-d and team-b/web are unassigned."""

    def t(name: str, created: str, spec: dict[str, Any]) -> Tenant:
        return Tenant.model_validate({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"pricePlanRef": {"name": "std"}, **spec},
        })  # fmt: skip

    return [
        t("acme", "2026-01-01T00:00:00Z", {"namespaces": ["team-a"]}),
        t("beta", "2026-01-02T00:00:00Z",
          {"namespaces": ["team-b"], "podSelector": {"matchLabels": {"app": "infer"}}}),
        t("late", "2026-01-03T00:00:00Z", {"namespaces": ["team-a", "team-z"]}),
    ]  # fmt: skip


TENANT_OF = {
    ("team-a", "trainer-0"): "acme",
    ("team-a", "batch"): "acme",
    ("team-b", "infer-0"): "beta",
    ("team-b", "web"): "_unassigned",
    ("team-d", "notebook"): "_unassigned",
}


def pod_directory(spec: dict[str, Any]) -> StaticPodDirectory:
    return StaticPodDirectory(
        PodMeta(p["namespace"], p["name"], p["uid"], p["labels"]) for p in spec["pods"]
    )


def truth_ms(spec: dict[str, Any]) -> dict[str, int]:
    """Allocated ms per tenant from the scenario (allocation length x devices)."""
    out: dict[str, int] = {}
    for p in spec["pods"]:
        tenant = TENANT_OF[(p["namespace"], p["name"])]
        for a in p["allocations"]:
            ms = round((a["end"] - a["start"]) * 1000) * len(a["devices"])
            out[tenant] = out.get(tenant, 0) + ms
    return out


class Exporter:
    """``kubemeter-exporter --simulate`` as a subprocess."""

    def __init__(self, scenario_path: Path, *, interval: str = "10ms", speed: float = SPEED,
                 log_path: Path, port: int | None = None) -> None:  # fmt: skip
        self.scenario_path = scenario_path
        self.interval = interval
        self.speed = speed
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubemeter_exporter.cli", "--simulate",
             str(self.scenario_path), "--listen", self.target, "--interval", self.interval,
             "--speed", str(self.speed), "--max-billable", "5s", "--no-kube",
             "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.scrape()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"exporter did not start: {self.log_path.read_text()[-2000:]}")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=2) as resp:
            body: bytes = resp.read()
            return body.decode()

    def counters(self) -> dict[tuple[str, ...], tuple[int, int]]:
        """(namespace, pod, gpu_uuid, exporter_instance) -> (allocated, active) now."""
        alloc: dict[tuple[str, ...], int] = {}
        active: dict[tuple[str, ...], int] = {}
        for fam in text_string_to_metric_families(self.scrape()):
            for s in fam.samples:
                if s.name not in (contract.GPU_ALLOCATED_MS.name, contract.GPU_ACTIVE_MS.name):
                    continue
                key = tuple(s.labels[k] for k in ("namespace", "pod", "gpu_uuid",
                                                  "exporter_instance"))  # fmt: skip
                target = alloc if s.name == contract.GPU_ALLOCATED_MS.name else active
                target[key] = round(s.value)
        return {k: (v, active.get(k, 0)) for k, v in alloc.items()}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    started: list[Exporter] = []

    def factory(spec: dict[str, Any], **kwargs: Any) -> Exporter:
        path = tmp_path / f"scenario-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        exp = Exporter(path, log_path=tmp_path / f"exporter-{len(started)}.log", **kwargs)
        started.append(exp)
        return exp.start()

    yield factory
    for exp in started:
        exp.stop(signal.SIGKILL)


@pytest.fixture
def sqlite_ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


CONFIG = MeteringConfig(
    step=timedelta(seconds=1),
    lag=timedelta(seconds=2),
    max_window=timedelta(seconds=4),
    scrape_margin=timedelta(seconds=5),
    initial_lookback=timedelta(minutes=5),
    prune_after=timedelta(hours=1),
)
PLANS = {
    "std": PricePlanSpec.model_validate(
        {
            "currency": "USD",
            "meters": [
                {
                    "name": "gpu",
                    "kind": "gpuTime",
                    "unit": "gpu-hour",
                    "pricing": {"model": "flat", "unitPrice": "2"},
                }
            ],
        }
    )
}


def ledger_gpu(ledger: Ledger, since: datetime) -> dict[str, tuple[int, int]]:
    """(allocated, active) ms per tenant over the periods from ``since`` to now."""
    out: dict[str, tuple[int, int]] = {}
    periods = {Period.of(since), Period.of(datetime.now(UTC))}
    for period in periods:
        for tenant, totals in ledger.all_period_totals(period).items():
            for key, q in totals.items():
                if key.kind != "gpu":
                    continue
                a, b = out.get(tenant, (0, 0))
                out[tenant] = (a + q.allocated_ms, b + q.active_ms)
    return out


def per_tenant(counters: dict[tuple[str, ...], tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for (ns, pod, _uuid, _inst), (a, b) in counters.items():
        t = TENANT_OF[(ns, pod)]
        x, y = out.get(t, (0, 0))
        out[t] = (x + a, y + b)
    return out


def prom_counters(prom: PrometheusServer) -> dict[tuple[str, ...], tuple[int, int]]:
    """The last values Prometheus holds for every exporter series (any instance)."""
    result: dict[tuple[str, ...], list[int]] = {}
    for i, metric in enumerate(
        ("kubemeter_gpu_allocated_milliseconds_total", "kubemeter_gpu_active_milliseconds_total")
    ):
        for r in prom.query(f"last_over_time({metric}[1h])"):
            m = r["metric"]
            key = (m["namespace"], m["pod"], m["gpu_uuid"], m["exporter_instance"])
            result.setdefault(key, [0, 0])[i] = round(float(r["value"][1]))
    return {k: (v[0], v[1]) for k, v in result.items()}


def wait_flat(exporter: Exporter, prom: PrometheusServer, until: float) -> None:
    """Wait until the scenario's allocations are over and Prometheus holds the final values."""
    while time.time() < until:
        time.sleep(0.2)
    final = exporter.counters()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        held = prom_counters(prom)
        if all(held.get(k) == v for k, v in final.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"prometheus never caught up: {final} vs {prom_counters(prom)}")


def run_cycles(
    cycle: MeteringCycle, until: Callable[[], bool], timeout: float = 60.0
) -> list[CycleResult]:
    results: list[CycleResult] = []
    deadline = time.monotonic() + timeout
    while not (until() and results):
        assert time.monotonic() < deadline, "metering did not finish in time"
        result = cycle.run(tenants(), PLANS)
        if result.window is not None:
            results.append(result)
        if not result.behind:
            time.sleep(0.25)
    return results


def settle(cycle: MeteringCycle) -> list[CycleResult]:
    """Meter until the window end passes now (+ lag): everything Prometheus holds is in."""
    target = datetime.now(UTC) + timedelta(seconds=0.5)
    last: list[datetime] = []

    def done() -> bool:
        return bool(last) and last[-1] >= target

    results: list[CycleResult] = []
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline
        r = cycle.run(tenants(), PLANS)
        if r.window is not None:
            results.append(r)
            last.append(r.window.end)
        if not r.behind:
            time.sleep(0.25)
    return results


def check_truth(ledger_totals: dict[str, tuple[int, int]], spec: dict[str, Any]) -> None:
    truth = truth_ms(spec)
    for tenant, ms in truth.items():
        got = ledger_totals.get(tenant, (0, 0))[0]
        assert abs(got - ms) <= ms * 0.001, (tenant, got, ms)


class CrashingLedger:
    """Reads go to the real ledger; the first write 'crashes' the process."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def get_checkpoint(self, name: str) -> dict[str, Any] | None:
        return self.ledger.get_checkpoint(name)

    def record_metering(self, commit: Any) -> Any:
        raise KeyboardInterrupt("simulated kill -9 between the Prometheus read and the write")


def test_metering_matches_truth_through_restarts_and_crashes(
    exporter_factory: Any, prometheus_factory: Any, ledger_url: str
) -> None:
    spec = scenario(END_S)
    exporter = exporter_factory(spec)
    started = time.time()
    prom = prometheus_factory([exporter.target])
    prom.wait_for_targets()
    pods = pod_directory(spec)
    client = PrometheusClient(prom.url)

    # process 1 meters a few seconds, then dies between cycles (no cleanup at all)
    ledger1 = Ledger.open(ledger_url)
    cycle1 = MeteringCycle(ledger1, client, pods, CONFIG)
    first = run_cycles(cycle1, lambda: time.time() > started + 6)
    assert first, "no window was metered"
    assert first[0].namespace_conflicts
    assert first[0].namespace_conflicts[0].tenant == "late"
    ledger1.close()

    # process 2 crashes after reading Prometheus, before the write: nothing is committed
    ledger2 = Ledger.open(ledger_url)
    before = ledger2.get_checkpoint("metering")
    time.sleep(1.2)  # let a window come due
    with pytest.raises(KeyboardInterrupt):
        MeteringCycle(CrashingLedger(ledger2), client, pods, CONFIG).run(tenants(), PLANS)
    assert ledger2.get_checkpoint("metering") == before

    # a replay of a committed window (same checkpoint, same time) is a duplicate no-op;
    # take the first window that holds usage (a window can be empty between scrapes)
    assert before is not None
    cycle2 = MeteringCycle(ledger2, client, pods, CONFIG)
    deadline = time.monotonic() + 20
    while True:
        time.sleep(1.2)
        now = datetime.now(UTC)
        before_r1 = ledger2.get_checkpoint("metering")
        r1 = cycle2.run(tenants(), PLANS, now=now)
        if r1.accepted > 0 or time.monotonic() > deadline:
            break
    assert r1.accepted > 0
    after = ledger2.get_checkpoint("metering")
    assert before_r1 is not None
    ledger2.set_checkpoint("metering", before_r1)
    r2 = cycle2.run(tenants(), PLANS, now=now)
    assert (r2.accepted, r2.duplicates) == (0, r1.accepted)
    assert ledger2.get_checkpoint("metering") == after

    # process 3 (new objects on the same ledger) continues where the others stopped
    ledger2.close()
    ledger3 = Ledger.open(ledger_url)
    cycle3 = MeteringCycle(ledger3, client, pods, CONFIG)
    run_cycles(cycle3, lambda: time.time() > started + END_REAL + 1)
    wait_flat(exporter, prom, started + END_REAL + 1)
    settle(cycle3)

    got = ledger_gpu(ledger3, datetime.fromtimestamp(started, UTC))
    assert got == per_tenant(exporter.counters())
    assert "late" not in got
    check_truth(got, spec)
    ledger3.close()


def test_metering_backfills_after_prometheus_outage(
    exporter_factory: Any, prometheus_factory: Any, sqlite_ledger_url: str
) -> None:
    spec = scenario(END_S)
    exporter = exporter_factory(spec)
    started = time.time()
    prom = prometheus_factory([exporter.target])
    prom.wait_for_targets()
    ledger = Ledger.open(sqlite_ledger_url)
    cycle = MeteringCycle(ledger, PrometheusClient(prom.url, timeout_s=2), pod_directory(spec),
                          CONFIG)  # fmt: skip
    committed: list[CycleResult] = []
    errors: list[Exception] = []
    loop = MeteringLoop(
        cycle,
        lambda: (tenants(), PLANS),
        interval_s=1.0,
        min_backoff_s=0.2,
        on_cycle=committed.append,
        on_error=errors.append,
    )
    seen_degraded: list[str] = []

    async def scenario_run() -> None:
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(4)
        assert committed
        assert not loop.degraded
        await asyncio.to_thread(prom.stop)  # same data dir; restarted below
        outage_started = datetime.now(UTC)
        await asyncio.sleep(5)
        seen_degraded.extend(loop.degraded)
        assert loop.failures >= 2
        assert all(isinstance(e, TransientError) for e in errors)
        await asyncio.to_thread(prom.start)
        # during the outage the checkpoint did not move
        assert committed[-1].window is not None
        assert committed[-1].window.end <= outage_started
        while time.time() < started + END_REAL + 1:
            await asyncio.sleep(0.5)
        await asyncio.to_thread(wait_flat, exporter, prom, started + END_REAL + 1)
        target = datetime.now(UTC) + timedelta(seconds=0.5)
        while not (committed[-1].window and committed[-1].window.end >= target):
            await asyncio.sleep(0.3)
        assert not loop.degraded
        loop.stop()
        await task

    asyncio.run(scenario_run())
    assert seen_degraded == ["prometheus"]
    # windows are contiguous: no gap, no overlap
    ws = [r.window for r in committed if r.window is not None]
    assert all(a.end == b.start for a, b in itertools.pairwise(ws))
    got = ledger_gpu(ledger, datetime.fromtimestamp(started, UTC))
    assert got == per_tenant(exporter.counters())
    assert got[UNASSIGNED][0] > 0
    check_truth(got, spec)
    ledger.close()


def test_metering_exporter_restart_counts_nothing_twice(
    exporter_factory: Any, prometheus_factory: Any, sqlite_ledger_url: str
) -> None:
    spec = scenario(END_S)
    first = exporter_factory(spec)
    prom = prometheus_factory([first.target])
    prom.wait_for_targets()
    ledger = Ledger.open(sqlite_ledger_url)
    cycle = MeteringCycle(ledger, PrometheusClient(prom.url), pod_directory(spec), CONFIG)
    t0 = time.time()
    run_cycles(cycle, lambda: time.time() > t0 + 6)

    first.stop(signal.SIGKILL)  # counters die with it; a new instance starts from 0
    second = exporter_factory(spec, port=first.port)
    started = time.time()
    run_cycles(cycle, lambda: time.time() > started + END_REAL + 1)
    wait_flat(second, prom, started + END_REAL + 1)
    settle(cycle)

    held = prom_counters(prom)  # the first instance's final values, as scraped
    instances = {k[3] for k in held}
    assert len(instances) == 2
    got = ledger_gpu(ledger, datetime.fromtimestamp(t0, UTC))
    assert got == per_tenant(held)
    # the second run alone matches the scenario; the first adds its partial run on top
    second_only = per_tenant(second.counters())
    assert all(got[t][0] > second_only[t][0] for t in second_only)
    ledger.close()
