"""Benchmark: the real operator metering 10,000 GPU pods across 100 tenants.

Starts the dev cluster (kube-apiserver, etcd, controllers, kwok) with fake GPU nodes that
hold up to ``--pods-per-node`` pods each, creates one namespace and one Tenant (all on one
PricePlan) per tenant and ``--pods`` pods spread over the namespaces (``spec.nodeName`` set,
so no scheduler is involved; kwok marks them Running). A synthetic exporter
(bench/synthetic_exporter.py, a child process) serves the contract's GPU counters for exactly
those pods (real names and uids), growing with wall time; a real Prometheus scrapes it
(``honor_labels``). Then ``kubemeter operator`` runs as a subprocess against a SQLite ledger
while this script:

* polls the operator's own ``/metrics`` for ``kubemeter_metering_cycles_total`` and
  ``kubemeter_metering_cycle_duration_seconds`` (one cycle = query + compute + ledger write),
* counts the ``usage_window`` rows each cycle wrote (read-only SQLite),
* watches Tenants and notes when each one's ``status.lastMeteredTime`` reaches the window a
  cycle committed (the status reconcile that follows every cycle),
* samples the operator's VmRSS / VmHWM and CPU time from ``/proc/<pid>``.

Prints figures only (no pass/fail). Targets (docs PRODUCT.md): cycle <= 5 s for 10,000 pods
across 100 tenants; operator RSS <= 250 MB while watching them. Everything it starts is
stopped at the end, also on failure or Ctrl-C (with ``--keep-dir`` the temp dir with logs,
ledger and Prometheus data stays).

    .venv/bin/python bench/bench_operator_scale.py [--pods 10000] [--tenants 100] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

import procstat
import synthetic_exporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from loader import devcluster, prometheus

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GROUP, VERSION = "kubemeter.dev", "v1alpha1"
H100 = synthetic_exporter.GPU_MODEL
PLAN = "bench-gpu"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


# --------------------------------------------------------------------------- kube client


class Kube:
    """A small HTTPS client for the API server (admin client cert), one keep-alive
    connection per thread: enough for bulk creation without the kubernetes client's
    per-request overhead."""

    def __init__(self, server: str, pki: Path) -> None:
        url = urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._local = threading.local()

    def connect(self, timeout: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(
        self, method: str, path: str, body: object = None, accept: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": accept}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(3):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
                continue
            return resp.status, json.loads(raw) if raw else None
        raise AssertionError("unreachable")

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for _ in range(50):
            status, out = self.request("POST", path, body)
            if status in (200, 201):
                return dict(out)
            if status == 409:
                return {}
            if status in (429, 500, 503) or (status == 403 and "serviceaccount" in str(out)):
                time.sleep(0.2)
                continue
            raise RuntimeError(f"POST {path}: HTTP {status}: {str(out)[:500]}")
        raise RuntimeError(f"POST {path}: still failing after retries")


def pod_body(ns: str, name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"app": "bench-trainer", "team": "x", "billing.kubemeter.dev/bench": "1"},
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/gpu-workload:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


def plan_body() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PricePlan",
        "metadata": {"name": PLAN},
        "spec": {
            "currency": "USD",
            "meters": [
                {
                    "name": "h100",
                    "kind": "gpuTime",
                    "unit": "gpu-hour",
                    "gpuModel": H100,
                    "pricing": {"model": "flat", "unitPrice": "2.50"},
                }
            ],
        },
    }


def tenant_body(t: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"pricePlanRef": {"name": PLAN}, "namespaces": [f"bench-{t:03d}"]}
    if t % 2:  # half the tenants also select pods by label
        spec["podSelector"] = {"matchLabels": {"team": "x"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Tenant",
        "metadata": {"name": f"tenant-{t:03d}"},
        "spec": spec,
    }


def parallel(workers: int, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- observation


@dataclass
class OperatorMetrics:
    ok: float = 0.0
    failed: float = 0.0
    count: float = 0.0
    total_s: float = 0.0
    window_end: float = 0.0
    series: float = 0.0


def scrape_operator(url: str) -> OperatorMetrics | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    m = OperatorMetrics()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kubemeter_metering_cycles_total":
                if s.labels.get("outcome") == "ok":
                    m.ok = s.value
                elif s.labels.get("outcome") in ("transient", "error", "conflict"):
                    m.failed += s.value
            elif s.name == "kubemeter_metering_cycle_duration_seconds_count":
                m.count = s.value
            elif s.name == "kubemeter_metering_cycle_duration_seconds_sum":
                m.total_s = s.value
            elif s.name == "kubemeter_metering_window_end_timestamp_seconds":
                m.window_end = s.value
            elif s.name == "kubemeter_metering_series" and s.labels.get("source") == "gpu":
                m.series = s.value
    return m


def ledger_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM usage_window").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


class TenantWatcher(threading.Thread):
    """Watches Tenants; records when each first showed a given status.lastMeteredTime."""

    def __init__(self, kube: Kube) -> None:
        super().__init__(daemon=True, name="tenant-watch")
        self.kube = kube
        self.lock = threading.Lock()
        self.seen: dict[int, dict[str, float]] = {}  # window end (epoch s) -> tenant -> t
        self.stopping = threading.Event()
        self.conn: http.client.HTTPSConnection | None = None

    def updated(self, window_end: int) -> dict[str, float]:
        with self.lock:
            return dict(self.seen.get(window_end, {}))

    def run(self) -> None:
        path = f"/apis/{GROUP}/{VERSION}/tenants?" + urlencode(
            {"watch": "1", "timeoutSeconds": "3600"}
        )
        while not self.stopping.is_set():
            try:
                self.conn = self.kube.connect(timeout=3600)
                self.conn.request("GET", path, headers={"Accept": "application/json"})
                resp = self.conn.getresponse()
                while not self.stopping.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    self._event(json.loads(line), time.monotonic())
            except Exception:  # closed by stop(), or the stream broke: reconnect
                if self.stopping.is_set():
                    return
                time.sleep(0.5)

    def _event(self, event: dict[str, Any], at: float) -> None:
        obj = event.get("object") or {}
        stamp = (obj.get("status") or {}).get("lastMeteredTime")
        name = (obj.get("metadata") or {}).get("name", "")
        if not stamp or not name:
            return
        end = round(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
        with self.lock:
            self.seen.setdefault(end, {}).setdefault(name, at)

    def stop(self) -> None:
        self.stopping.set()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                if self.conn.sock is not None:
                    self.conn.sock.shutdown(2)
            self.conn.close()


@dataclass
class Cycle:
    n: int
    cycles: int  # ok cycles in this poll (> 1 when the operator was catching up)
    window_end: float
    duration_s: float
    series: int
    records: int
    detected: float  # monotonic time of the poll that saw it
    previous_poll: float
    rss_mb: float
    hwm_mb: float
    cpu_pct: float
    status_n: int = 0
    reconcile_s: float | None = None
    start_to_status_s: float | None = None


@dataclass
class Procs:
    """Everything started, so cleanup can stop it in reverse order."""

    cleanups: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def add(self, name: str, fn: Callable[[], object]) -> None:
        self.cleanups.append((name, fn))

    def close(self) -> None:
        while self.cleanups:
            name, fn = self.cleanups.pop()
            try:
                fn()
            except Exception as exc:
                print(f"cleanup of {name} failed: {exc!r}", file=sys.stderr)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.figures: dict[str, str] = {}
        self.cpu_pids: dict[str, int] = {}

    # ---- cluster and objects

    def cluster(self) -> None:
        a = self.args
        t = time.monotonic()
        cluster_dir = self.tmp / "cluster"
        self.procs.add("dev cluster", lambda: devcluster.stop(cluster_dir))
        cluster = devcluster.start(cluster_dir, controllers=True, gpu_nodes=0, die_with_parent=True)
        self.cluster_obj = cluster
        self.kubeconfig = str(cluster.kubeconfig)
        self.kube = Kube(cluster.server, cluster_dir / "pki")
        self.cpu_pids.update(devcluster._load_pids(cluster_dir))
        nodes = math.ceil(a.pods / a.pods_per_node)
        self.nodes = [f"bench-gpu-{i:03d}" for i in range(nodes)]

        def make_node(name: str) -> None:
            body = devcluster.fake_gpu_node(name, a.pods_per_node)
            for key in ("capacity", "allocatable"):
                body["status"][key]["pods"] = str(a.pods_per_node + 10)
            self.kube.create("/api/v1/nodes", body)

        parallel(a.workers, make_node, self.nodes)
        devcluster.wait_nodes_ready(cluster, self.nodes, timeout=120)
        res = cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        if res.returncode != 0:
            raise RuntimeError(f"kubectl apply crds: {res.stderr}")
        res = cluster.kubectl(
            "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"
        )
        if res.returncode != 0:
            raise RuntimeError(f"kubectl wait crds: {res.stderr}")
        self.figures["cluster up (+ CRDs, nodes)"] = (
            f"{time.monotonic() - t:.1f} s ({nodes} kwok nodes x {a.pods_per_node} pods)"
        )
        say(f"cluster up with {nodes} fake GPU nodes ({time.monotonic() - t:.1f}s)")

    def objects(self) -> list[list[str]]:
        a = self.args
        namespaces = [f"bench-{t:03d}" for t in range(a.tenants)]
        t = time.monotonic()
        parallel(
            a.workers,
            lambda ns: self.kube.create(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            ),
            namespaces,
        )
        self.kube.create(f"/apis/{GROUP}/{VERSION}/priceplans", plan_body())
        parallel(
            a.workers,
            lambda i: self.kube.create(f"/apis/{GROUP}/{VERSION}/tenants", tenant_body(i)),
            range(a.tenants),
        )
        ns_s = time.monotonic() - t
        say(f"{a.tenants} namespaces, {a.tenants} Tenants, 1 PricePlan created ({ns_s:.1f}s)")
        self._wait_service_accounts(set(namespaces))
        wait_sa_s = time.monotonic() - t - ns_s

        per_ns = [
            a.pods // a.tenants + (1 if i < a.pods % a.tenants else 0) for i in range(a.tenants)
        ]
        specs: list[tuple[str, str, str]] = []
        for i, count in enumerate(per_ns):
            for j in range(count):
                specs.append(
                    (namespaces[i], f"gpu-{j:04d}", self.nodes[len(specs) // a.pods_per_node])
                )
        t = time.monotonic()

        def make_pod(spec: tuple[str, str, str]) -> list[str]:
            ns, name, node = spec
            out = self.kube.create(f"/api/v1/namespaces/{ns}/pods", pod_body(ns, name, node))
            return [node, ns, name, str(out.get("metadata", {}).get("uid", ""))]

        pods = parallel(a.workers, make_pod, specs)
        pods_s = time.monotonic() - t
        rate = len(pods) / pods_s if pods_s else 0.0
        say(f"{len(pods)} pods created in {pods_s:.1f}s ({rate:.0f}/s, {a.workers} workers)")
        self.figures["create namespaces+tenants"] = (
            f"{ns_s:.1f} s (+ {wait_sa_s:.1f} s waiting for default ServiceAccounts)"
        )
        self.figures["create pods"] = f"{pods_s:.1f} s ({rate:.0f} pods/s, {a.workers} threads)"
        return pods

    def _wait_service_accounts(self, namespaces: set[str], timeout: float = 120) -> None:
        """The ServiceAccount admission plugin refuses pods until the namespace's `default`
        ServiceAccount exists (the controller-manager creates it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = urlencode({"fieldSelector": "metadata.name=default"})
            status, body = self.kube.request("GET", f"/api/v1/serviceaccounts?{q}")
            if status == 200:
                have = {i["metadata"]["namespace"] for i in body.get("items", [])}
                if namespaces <= have:
                    return
            time.sleep(0.5)
        raise TimeoutError("default ServiceAccounts not created")

    def running_pods(self) -> int:
        q = urlencode({"fieldSelector": "status.phase=Running", "labelSelector": "team=x"})
        status, body = self.kube.request("GET", f"/api/v1/pods?{q}", accept=TABLE)
        return len(body.get("rows") or []) if status == 200 else -1

    def wait_running(self, total: int) -> None:
        t = time.monotonic()
        timeout = max(60.0, total / 40)
        running = 0
        while time.monotonic() - t < timeout:
            running = self.running_pods()
            if running >= total:
                break
            time.sleep(3)
        took = time.monotonic() - t
        state = "all" if running >= total else f"only {running} of"
        say(f"{state} {total} pods Running (kwok) after {took:.1f}s more")
        self.figures["pods Running (kwok)"] = f"{state} {total} after another {took:.1f} s"

    # ---- exporter and Prometheus

    def exporter(self, pods: list[list[str]]) -> prometheus.PrometheusServer:
        port = prometheus.free_port()
        child = synthetic_exporter.start(pods, port, self.tmp)
        self.procs.add("synthetic exporter", lambda: stop_process(child))
        self.cpu_pids["exporter"] = child.pid
        prom = prometheus.PrometheusServer(
            [f"127.0.0.1:{port}"],
            data_dir=self.tmp / "prometheus",
            scrape_interval=f"{self.args.scrape_interval}s",
        )
        self.procs.add("prometheus", prom.stop)
        prom.start()
        assert prom.proc is not None
        self.cpu_pids["prometheus"] = prom.proc.pid
        say(f"synthetic exporter on :{port}, Prometheus at {prom.url}")
        return prom

    def wait_series(self, prom: prometheus.PrometheusServer, pods: int) -> float:
        t = time.monotonic()
        synthetic_exporter.wait_scraped(prom, pods, timeout=90)
        say(f"Prometheus has all {pods} series ({time.monotonic() - t:.1f}s)")
        return time.monotonic()

    # ---- the operator

    def operator(self, prom_url: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        a = self.args
        port = prometheus.free_port()
        db = self.tmp / "ledger.db"
        self.op_log = self.tmp / "operator.log"
        log = open(self.op_log, "wb")  # noqa: SIM115 - owned by the child
        argv = [
            str(BIN / "kubemeter"), "operator", "--kubeconfig", self.kubeconfig,
            "--prometheus-url", prom_url, "--db", f"sqlite:///{db}",
            "--interval", str(a.interval), "--lag", str(a.lag), "--events-listen", "",
            "--metrics-port", str(port), "--standalone",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.add("operator", lambda: stop_process(proc))
        self.cpu_pids["operator"] = proc.pid
        say(f"operator started (pid {proc.pid}, metrics :{port}, log {self.op_log})")
        return proc, f"http://127.0.0.1:{port}/metrics", db

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.op_log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def observe(
        self, proc: subprocess.Popen[bytes], metrics_url: str, db: Path, watcher: TenantWatcher
    ) -> list[Cycle]:
        a = self.args
        started = time.monotonic()
        pid = proc.pid
        seeded_at: float | None = None
        prev = OperatorMetrics()
        prev_rows = 0
        prev_poll = started
        prev_cpu, prev_cpu_t = 0.0, started
        peak_rss = 0.0
        rss_samples: list[tuple[float, float]] = []
        cycles: list[Cycle] = []
        deadline = started + a.startup_timeout + a.cycles * a.interval * 2
        while len(cycles) < a.cycles:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"only {len(cycles)} cycles seen; log:\n{self.log_tail()}")
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited ({proc.returncode}):\n{self.log_tail()}")
            rss, hwm = procstat.memory_mb(pid)
            peak_rss = max(peak_rss, rss)
            rss_samples.append((now - started, rss))
            if seeded_at is None and "seeded" in self.log_tail(100_000):
                seeded_at = now
                self.figures["operator RSS when seeded"] = f"{rss:.1f} MB"
                say(f"operator seeded its registries ({now - started:.1f}s after start); "
                    f"RSS {rss:.0f} MB")  # fmt: skip
            m = scrape_operator(metrics_url)
            if m is not None and m.failed > prev.failed:
                say(f"warning: {m.failed - prev.failed:.0f} failed metering cycle(s); see log")
            if m is not None and m.count > prev.count:
                n = int(m.count - prev.count)
                rows = ledger_rows(db)
                cpu = procstat.cpu_s(pid)
                c = Cycle(
                    n=len(cycles) + 1, cycles=n, window_end=m.window_end,
                    duration_s=(m.total_s - prev.total_s) / n, series=int(m.series),
                    records=rows - prev_rows, detected=now, previous_poll=prev_poll,
                    rss_mb=rss, hwm_mb=hwm,
                    cpu_pct=100 * (cpu - prev_cpu) / max(1e-9, now - prev_cpu_t),
                )  # fmt: skip
                if not cycles:
                    c.cpu_pct = 100 * cpu / max(1e-9, now - started)
                cycles.append(c)
                say(f"cycle {c.n}: {c.duration_s:.2f}s, {c.series} series, {c.records} records, "
                    f"RSS {rss:.0f} MB (peak {hwm:.0f} MB)")  # fmt: skip
                prev, prev_rows, prev_cpu, prev_cpu_t = m, rows, cpu, now
            elif m is not None:
                prev.failed = m.failed
            prev_poll = now
            time.sleep(a.poll)
        # let the last cycle's status reconcile finish (or a second's grace after all)
        end = round(cycles[-1].window_end)
        t = time.monotonic()
        while time.monotonic() - t < max(30.0, a.interval):
            if len(watcher.updated(end)) >= a.tenants:
                break
            rss, _ = procstat.memory_mb(pid)
            peak_rss = max(peak_rss, rss)
            time.sleep(a.poll)
        for c in cycles:
            seen = watcher.updated(round(c.window_end))
            c.status_n = len(seen)
            if seen and c.cycles == 1:
                first, last = min(seen.values()), max(seen.values())
                cycle_end = min(c.detected, first)  # the first patch follows the cycle's end
                c.reconcile_s = last - cycle_end
                c.start_to_status_s = last - (cycle_end - c.duration_s)
        rss_now, hwm = procstat.memory_mb(pid)
        self.rss = (rss_now, max(peak_rss, rss_now), hwm)
        self.startup = (seeded_at, cycles[0].detected, started)
        self.rss_samples = rss_samples
        return cycles

    def cpu_now(self) -> dict[str, float]:
        return {name: procstat.cpu_s(pid) for name, pid in self.cpu_pids.items()}


def report(bench: Bench, cycles: list[Cycle], cpu0: dict[str, float], cpu_span: float) -> None:
    a = bench.args
    print()
    print("=" * 78)
    print("kubemeter operator at scale (real kube-apiserver + kwok, Prometheus, operator)")
    print("=" * 78)
    seeded_at, first_cycle_at, started = bench.startup
    rows = [
        ("pods", f"{a.pods}"),
        ("tenants (namespaces)", f"{a.tenants} (1 PricePlan; odd tenants also podSelector)"),
        *bench.figures.items(),
        ("operator: start -> seeded", f"{(seeded_at or started) - started:.1f} s"),
        ("operator: start -> first cycle", f"{first_cycle_at - started:.1f} s"),
        ("interval / lag / scrape", f"{a.interval:g} s / {a.lag:g} s / {a.scrape_interval} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print()
    print(
        f"{'cycle':>5} {'window_end':>10} {'win_s':>5} {'cycle_s':>8} {'series':>7} {'records':>8} "
        f"{'tenants':>8} {'reconcile_s':>11} {'start->status_s':>15} {'rss_mb':>7} "
        f"{'hwm_mb':>7} {'cpu%':>5}"
    )
    prev_end = 0.0
    for c in cycles:
        end = datetime.fromtimestamp(c.window_end, UTC).strftime("%H:%M:%S")
        span = f"{c.window_end - prev_end:.0f}" if prev_end else f"{a.interval:.0f}"
        prev_end = c.window_end
        rec = "-" if c.reconcile_s is None else f"{c.reconcile_s:.2f}"
        tot = "-" if c.start_to_status_s is None else f"{c.start_to_status_s:.2f}"
        mark = f"x{c.cycles}" if c.cycles > 1 else ""
        print(
            f"{c.n:>5} {end:>10} {span:>5} {c.duration_s:>8.3f} {c.series:>7} {c.records:>8} "
            f"{c.status_n:>5}/{a.tenants:<3} {rec:>10} {tot:>15} {c.rss_mb:>7.1f} "
            f"{c.hwm_mb:>7.1f} {c.cpu_pct:>5.0f}{mark}"
        )
    steady = cycles[1:] or cycles
    durations = sorted(c.duration_s for c in steady)
    rss_now, rss_peak, hwm = bench.rss
    print()
    print(
        f"metering cycle (cycles 2..{len(cycles)}): median {durations[len(durations) // 2]:.3f} s,"
        f" max {durations[-1]:.3f} s; first cycle {cycles[0].duration_s:.3f} s"
        f"   [target <= 5 s]"
    )
    recon = [c.start_to_status_s for c in steady if c.start_to_status_s is not None]
    if recon:
        print(
            f"cycle start -> all {a.tenants} Tenant statuses: max {max(recon):.2f} s "
            f"(reconcile after the cycle: max "
            f"{max(c.reconcile_s or 0.0 for c in steady):.2f} s)"
        )
    print(
        f"operator RSS: now {rss_now:.1f} MB, max sampled {rss_peak:.1f} MB, "
        f"VmHWM {hwm:.1f} MB   [target <= 250 MB]"
    )
    cpu1 = bench.cpu_now()
    shares = ", ".join(
        f"{name} {100 * (cpu1[name] - cpu0.get(name, 0.0)) / cpu_span:.0f}%"
        for name in sorted(cpu1, key=lambda n: cpu0.get(n, 0.0) - cpu1[n])
        if cpu1[name] > 0
    )
    print(f"CPU over the observed {cpu_span:.0f} s (100% = one core, 2 cores here): {shares}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=None, help="GPU pods (10000)")
    p.add_argument("--tenants", type=int, default=None, help="tenants = namespaces (100)")
    p.add_argument("--quick", action="store_true", help="1000 pods, 10 tenants, 3 cycles")
    p.add_argument("--cycles", type=int, default=None, help="metering cycles to watch (5)")
    p.add_argument("--interval", type=float, default=15.0, help="operator --interval (15)")
    p.add_argument("--lag", type=float, default=20.0, help="operator --lag (20)")
    p.add_argument("--scrape-interval", type=int, default=5, help="Prometheus, seconds (5)")
    p.add_argument("--pods-per-node", type=int, default=500)
    p.add_argument("--workers", type=int, default=8, help="threads creating objects (8)")
    p.add_argument("--poll", type=float, default=0.2, help="observation poll (s)")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, ledger)")
    args = p.parse_args()
    args.pods = args.pods or (1000 if args.quick else 10_000)
    args.tenants = args.tenants or (10 if args.quick else 100)
    args.cycles = args.cycles or (3 if args.quick else 5)
    if args.tenants > 1000 or args.pods < args.tenants:
        p.error("need 1 <= tenants <= 1000 and pods >= tenants")

    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="kubemeter-opscale-"))
    procs = Procs()
    ok = False
    watcher: TenantWatcher | None = None
    try:
        say(f"bench: {args.pods} pods, {args.tenants} tenants; temp dir {tmp}")
        bench = Bench(args, tmp, procs)
        bench.cluster()
        pods = bench.objects()
        prom = bench.exporter(pods)  # scraping starts while kwok marks the pods Running
        bench.wait_running(len(pods))
        ready_at = bench.wait_series(prom, len(pods))
        # The operator's first window ends `lag` (+ up to one interval) before now: let
        # Prometheus hold samples that far back so the first cycle sees every series too.
        wait = ready_at + args.lag + args.interval + args.scrape_interval - time.monotonic()
        if wait > 0:
            say(f"waiting {wait:.0f}s so the first metering window has samples")
            time.sleep(wait)
        watcher = TenantWatcher(bench.kube)
        watcher.start()
        procs.add("tenant watch", watcher.stop)
        cpu0 = bench.cpu_now()
        t_cpu = time.monotonic()
        proc, metrics_url, db = bench.operator(prom.url)
        cycles = bench.observe(proc, metrics_url, db, watcher)
        report(bench, cycles, cpu0, time.monotonic() - t_cpu)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        procs.close()
        if ok and not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs, ledger and Prometheus data left in {tmp}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
