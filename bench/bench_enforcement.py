"""Benchmark: budget enforcement at scale, and what a budget overshoots by.

**Part 1, Kubernetes (real).** Starts the dev cluster (kube-apiserver, etcd,
kube-controller-manager, kube-scheduler, kwok) and creates one namespace per tenant (100),
GPU Deployments (1,000, ``nvidia.com/gpu: 1``, 1-3 replicas) and GPU Jobs (200) spread over
them. Their pods stay Pending (a nodeSelector no node matches: no GPU capacity is needed),
but the ReplicaSet and Job controllers really create and delete them, so "at 0" is what the
API server reports: ``spec.replicas == 0`` and ``status.replicas == 0`` (Deployments),
``spec.suspend`` and ``status.active == 0`` (Jobs). Then the operator's own steps 2 and 3
run in this process against a real SQLite ledger: the real `billing.biller.Biller` rates
usage windows written to the ledger, in which 20 tenants cross their 500 USD budgets in the
same cycle, and the real `controller.budgets.BudgetStep` decides and enforces with the real
`Enforcer` on the real `KubeWorkloads` (the operator's client: `load_api_client` on the
kubeconfig). Two cluster-wide watches (Deployments, Jobs) note when each change shows up.
Measured:

* bill + decide -> enforce pass, from the start of the bill step of the cycle that rates
  the crossing: its duration, and the time until the watches show every GPU workload of
  the crossing tenants at 0 (spec, then status) [target <= 5 s];
* the next cycle's pass (the suspensions become ``suspended``) and its cost;
* the restore (limits raised: decision ``restore`` for all of them): the pass, and the
  time until every workload is back to its recorded replicas in spec and status;
* that the other tenants' workloads were never written (spec unchanged, no
  ``kubemeter-operator`` field manager): printed.

The metering step that precedes the bill step in a real cycle is not part of it
(bench_operator_scale.py and bench_metering.py measure it; target <= 5 s of its own).

**Part 2, money (simulated time).** The time-travel harness (tests/support/timetravel.py,
with `support.workloads.FakeWorkloads` whose pods hold the GPUs the operator meters) at the
operator's default intervals: metering step 15 s, lag 30 s, a cycle every 15 s, Prometheus
scraping every 15 s. A tenant burns 40 H100s at 3.00 USD per GPU-hour (120 USD/h) into a
1,000 USD budget (``scaleDown``), without ``stopBefore`` and with 1m and 5m, at several
phases of the crossing against the window grid and the cycle. Printed: the overshoot
(``status.enforcement.overshoot`` once metering has covered the stop) in money and in
seconds of burn, and "usage crossing -> 0": when the running total truly crossed the limit
vs the simulated instant the last pod stopped [target <= interval + lag + 5 s]. The
simulated pods stop the instant they are scaled; the real stop latency is part 1's.

Prints figures only (no pass/fail), with the targets beside them. ``--quick``: 10 tenants,
100 Deployments, 20 Jobs, 2 crossing, one phase per setting (well under a minute).
Everything started is stopped at the end, also on failure or Ctrl-C (``--keep-dir`` keeps
the temp dir: cluster logs, ledgers).

Imports: hack/ helpers and tests/support (the time-travel harness) through hack/loader.py,
which puts tests/ on sys.path; the API server client, `Procs` and `parallel` from the
sibling bench_operator_scale.py.

    .venv/bin/python bench/bench_enforcement.py [--quick] [--tenants 100]
        [--deployments 1000] [--jobs 200] [--crossing 20] [--no-kube] [--no-money]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import procstat
from bench_operator_scale import Kube, Procs, parallel, say
from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import GpuUsage
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.budget.decision import Action, Decision
from kubemeter_operator.controller.budgets import BudgetOutcome, BudgetStep
from kubemeter_operator.enforcement.enforcer import (
    EnforceContext,
    EnforcementResult,
    Enforcer,
)
from kubemeter_operator.kube.client import load_api_client
from kubemeter_operator.kube.gpu import GpuResources
from kubemeter_operator.kube.workloads import FIELD_MANAGER, KubeWorkloads
from kubemeter_operator.ledger import Ledger, SuspensionRow, UsageWindow
from kubemeter_operator.metering.cycle import MeteringConfig
from kubemeter_operator.metering.sources import GPU_SOURCE
from kubemeter_operator.usage import Period

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
import loader
from loader import devcluster

# Untyped on purpose: through loader's TYPE_CHECKING imports mypy would check
# tests/support/timetravel.py and workloads.py, which are not strict-clean.
timetravel = loader.load_support("timetravel")

PLAN = "bench-gpu"
PRICE = Decimal("3.00")
"""USD per GPU-hour (an H100 at a cloud's on-demand price, roughly)."""
LIMIT = Decimal(500)
"""Each tenant's budget in part 1 (USD per period)."""
NOWHERE = {"kubemeter.dev/bench": "nowhere"}
"""A nodeSelector no node matches: pods stay Pending, no GPU capacity is needed."""
MS_PER_HOUR = 3_600_000

Key = tuple[str, str, str]
"""(kind, namespace, name)."""


def plan_spec(price: Decimal) -> dict[str, Any]:
    return {
        "currency": "USD",
        "meters": [{"name": "h100", "kind": "gpuTime", "unit": "gpu-hour",
                    "pricing": {"model": "flat", "unitPrice": str(price)}}],
    }  # fmt: skip


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


# --------------------------------------------------------------------------- the watches


@dataclass
class Seen:
    """One workload as the watch last showed it, reduced to two numbers: `spec` is the
    replicas it asks for (a Job: 0 while suspended, else its parallelism) and `status` the
    pods it has (status.replicas, status.active)."""

    spec: int
    status: int
    spec_at: float
    status_at: float
    spec_changes: int = 0
    by_kubemeter: bool = False


def summary(kind: str, obj: Mapping[str, Any]) -> tuple[int, int, bool]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    managers = {m.get("manager") for m in (obj.get("metadata") or {}).get("managedFields") or []}
    if kind == "Deployment":
        wanted, running = int(spec.get("replicas", 1)), int(status.get("replicas") or 0)
    else:
        wanted = 0 if spec.get("suspend") else int(spec.get("parallelism", 1))
        running = int(status.get("active") or 0)
    return wanted, running, FIELD_MANAGER in managers


class Watch(threading.Thread):
    """A cluster-wide list + watch of one kind; keeps `Seen` per object, stamped with the
    monotonic time each change arrived."""

    def __init__(self, kube: Kube, kind: str, path: str) -> None:
        super().__init__(daemon=True, name=f"watch-{kind}")
        self.kube, self.kind, self.path = kube, kind, path
        self.lock = threading.Lock()
        self.seen: dict[Key, Seen] = {}
        self.stopping = threading.Event()
        self.conn: http.client.HTTPSConnection | None = None
        self.events = 0

    def _update(self, obj: Mapping[str, Any], at: float, deleted: bool = False) -> None:
        meta = obj.get("metadata") or {}
        key = (self.kind, str(meta.get("namespace")), str(meta.get("name")))
        with self.lock:
            if deleted:
                self.seen.pop(key, None)
                return
            spec, status, ours = summary(self.kind, obj)
            s = self.seen.get(key)
            if s is None:
                self.seen[key] = Seen(spec, status, at, at, by_kubemeter=ours)
                return
            if spec != s.spec:
                s.spec, s.spec_at, s.spec_changes = spec, at, s.spec_changes + 1
            if status != s.status:
                s.status, s.status_at = status, at
            s.by_kubemeter = s.by_kubemeter or ours

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                status, body = self.kube.request("GET", self.path)
                if status != 200:
                    raise OSError(f"list {self.path}: HTTP {status}")
                now = time.monotonic()
                for item in body.get("items") or []:
                    self._update(item, now)
                self._watch(str(body["metadata"]["resourceVersion"]))
            # AttributeError: http.client reading a response `stop` closed meanwhile
            except (OSError, http.client.HTTPException, ValueError, KeyError, AttributeError):
                if self.stopping.wait(0.2):
                    return

    def _watch(self, version: str) -> None:
        query = urlencode({"watch": "1", "resourceVersion": version,
                           "allowWatchBookmarks": "true", "timeoutSeconds": "3600"})  # fmt: skip
        self.conn = self.kube.connect(timeout=3600)
        self.conn.request("GET", f"{self.path}?{query}", headers={"Accept": "application/json"})
        resp = self.conn.getresponse()
        while not self.stopping.is_set():
            line = resp.readline()
            if not line:
                return
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # 410 Gone: list again
                return
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.events += 1
                self._update(obj, time.monotonic(), deleted=kind == "DELETED")

    def stop(self) -> None:
        self.stopping.set()
        if self.conn is not None and self.conn.sock is not None:
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(2)
            self.conn.close()

    def snapshot(self) -> dict[Key, Seen]:
        with self.lock:
            return {k: Seen(**vars(v)) for k, v in self.seen.items()}


class Watches:
    def __init__(self, kube: Kube) -> None:
        self.all = [
            Watch(kube, "Deployment", "/apis/apps/v1/deployments"),
            Watch(kube, "Job", "/apis/batch/v1/jobs"),
        ]
        for w in self.all:
            w.start()

    def stop(self) -> None:
        for w in self.all:
            w.stop()

    def snapshot(self) -> dict[Key, Seen]:
        out: dict[Key, Seen] = {}
        for w in self.all:
            out.update(w.snapshot())
        return out

    def events(self) -> int:
        return sum(w.events for w in self.all)

    def settled(self, want: Mapping[Key, int]) -> tuple[float, float] | None:
        """(last spec change, last status change) once every workload in `want` shows
        spec == status == its number; None while one does not."""
        seen = self.snapshot()
        last_spec = last_status = 0.0
        for key, n in want.items():
            s = seen.get(key)
            if s is None or s.spec != n or s.status != n:
                return None
            last_spec, last_status = max(last_spec, s.spec_at), max(last_status, s.status_at)
        return last_spec, last_status

    def lags(self, keys: Sequence[Key]) -> tuple[str, dict[str, float]]:
        """How long each workload's status trailed its spec (the controllers' share), and
        when the last of each kind settled."""
        seen = self.snapshot()
        lags = sorted(seen[k].status_at - seen[k].spec_at for k in keys)
        last = {kind: max(seen[k].status_at for k in keys if k[0] == kind)
                for kind in sorted({k[0] for k in keys})}  # fmt: skip
        return (f"status after spec: median {statistics.median(lags):.2f} s, max "
                f"{lags[-1]:.2f} s", last)  # fmt: skip

    def wait(self, want: Mapping[Key, int], timeout: float) -> tuple[float, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.settled(want)
            if got is not None:
                return got
            time.sleep(0.05)  # the times are the events', not the poll's
        seen = self.snapshot()
        off = [(k, n, seen.get(k)) for k, n in want.items()
               if k not in seen or (seen[k].spec, seen[k].status) != (n, n)]  # fmt: skip
        raise TimeoutError(f"{len(off)} of {len(want)} workloads not settled, e.g. {off[:3]}")


# --------------------------------------------------------------------------- instrumented


class CountingWorkloads(KubeWorkloads):
    """The real client, with each API call's latency noted by the client method's name."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.lock = threading.Lock()
        self.calls: dict[str, list[float]] = {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.monotonic()
        try:
            return super()._call(what, fn, *args, **kwargs)
        finally:
            with self.lock:
                self.calls.setdefault(fn.__name__, []).append(time.monotonic() - t)

    def take(self) -> dict[str, list[float]]:
        with self.lock:
            out, self.calls = self.calls, {}
        return out


class TimedEnforcer(Enforcer):
    """The real Enforcer; notes how long each tenant's `apply` took."""

    durations: list[float]

    async def apply(
        self,
        tenant: Tenant,
        decision: Decision,
        ctx: EnforceContext,
        active: SuspensionRow | None,
    ) -> EnforcementResult:
        t = time.monotonic()
        try:
            return await super().apply(tenant, decision, ctx, active)
        finally:
            self.durations.append(time.monotonic() - t)


class StatusSink:
    """Where BudgetStep writes a Tenant status before a restore (not measured here)."""

    def __init__(self) -> None:
        self.patches = 0

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        self.patches += 1


def calls_line(calls: Mapping[str, Sequence[float]]) -> str:
    parts = [
        f"{name.replace('_namespaced', '')} {len(v)} x {1000 * statistics.mean(v):.0f} ms"
        for name, v in sorted(calls.items())
    ]
    return f"{sum(len(v) for v in calls.values())} API calls: " + ", ".join(parts)


# --------------------------------------------------------------------------- part 1


def deployment_body(ns: str, name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": gpu_pod_spec()},
        },
    }


def job_body(ns: str, name: str) -> dict[str, Any]:
    spec = {**gpu_pod_spec(), "restartPolicy": "Never"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }


def gpu_pod_spec() -> dict[str, Any]:
    return {
        "nodeSelector": NOWHERE,
        "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": "registry.example/gpu-workload:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    }  # fmt: skip


def spread(total: int, buckets: int) -> list[int]:
    return [total // buckets + (1 if i < total % buckets else 0) for i in range(buckets)]


def tenant_obj(i: int, limit: Decimal) -> Tenant:
    return Tenant.model_validate({
        "metadata": {"name": f"tenant-{i:03d}", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"pricePlanRef": {"name": PLAN}, "namespaces": [f"enf-{i:03d}"],
                 "budget": {"limit": str(limit), "enforcement": "scaleDown"}},
    })  # fmt: skip


def ms_for(money: Decimal) -> int:
    return int(money / PRICE * MS_PER_HOUR)


class KubePart:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.figures: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        procs.add("event loop", self.loop.close)

    def figure(self, key: str, value: str) -> None:
        self.figures.append((key, value))
        say(f"{key}: {value}")

    def run(self) -> None:
        t = time.monotonic()
        cluster_dir = self.tmp / "cluster"
        self.procs.add("dev cluster", lambda: devcluster.stop(cluster_dir))
        cluster = devcluster.start(cluster_dir, controllers=True, gpu_nodes=0, die_with_parent=True)
        self.figure("cluster up", f"{time.monotonic() - t:.1f} s")
        self.pids = {**cluster.pids, "this process": os.getpid()}
        self.cm_metrics = f"https://127.0.0.1:{cluster.ports['controller-manager']}/metrics"
        self.tls = ssl.create_default_context()  # its serving certificate is self-signed
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        self.tls.load_cert_chain(str(cluster_dir / "pki" / "admin.crt"),
                                 str(cluster_dir / "pki" / "admin.key"))  # fmt: skip
        self.kube = Kube(cluster.server, cluster_dir / "pki")
        self.watches = Watches(self.kube)
        self.procs.add("watches", self.watches.stop)
        original = self.create()
        self.quiesce()
        self.enforce(cluster.kubeconfig, original)

    def quiesce(self, below: float = 0.25, timeout: float = 90) -> None:
        """Wait until the cluster's processes use less than `below` cores over a second
        (the scheduler posts an Event per Pending pod, throttled, long after the pods)."""
        t = time.monotonic()
        used = 0.0
        while time.monotonic() - t < timeout:
            before = self.cpu()
            time.sleep(1)
            after = self.cpu()
            used = sum(after[n] - before[n] for n in before if n != "this process")
            if used < below:
                break
        self.figure("cluster quiet", f"after {time.monotonic() - t:.0f} s ({used:.2f} cores)")

    # ---- objects

    def create(self) -> dict[Key, int]:
        """Namespaces, Deployments and Jobs; returns what each one runs (its pods)."""
        a = self.args
        namespaces = [f"enf-{i:03d}" for i in range(a.tenants)]
        t = time.monotonic()
        parallel(a.workers, lambda ns: self.kube.create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            namespaces)  # fmt: skip
        poll_until("default ServiceAccounts", lambda: self.service_accounts(set(namespaces)), 120)
        ns_s = time.monotonic() - t
        original: dict[Key, int] = {}
        bodies: list[tuple[str, dict[str, Any]]] = []
        n = 0
        for ns, count in zip(namespaces, spread(a.deployments, a.tenants), strict=True):
            for j in range(count):
                replicas = 1 + n % 3
                n += 1
                original[("Deployment", ns, f"gpu-{j:03d}")] = replicas
                path = f"/apis/apps/v1/namespaces/{ns}/deployments"
                bodies.append((path, deployment_body(ns, f"gpu-{j:03d}", replicas)))
        for ns, count in zip(namespaces, spread(a.jobs, a.tenants), strict=True):
            for j in range(count):
                original[("Job", ns, f"batch-{j:03d}")] = 1
                bodies.append(
                    (f"/apis/batch/v1/namespaces/{ns}/jobs", job_body(ns, f"batch-{j:03d}"))
                )
        t = time.monotonic()
        parallel(a.workers, lambda pb: self.kube.create(*pb), bodies)
        create_s = time.monotonic() - t
        pods = sum(original.values())
        self.watches.wait(original, timeout=max(120.0, pods / 10))
        pods_s = time.monotonic() - t
        self.figure("create", f"{a.tenants} namespaces in {ns_s:.1f} s (default SAs included); "
                    f"{a.deployments} Deployments + {a.jobs} Jobs in {create_s:.1f} s "
                    f"({len(bodies) / create_s:.0f}/s, {a.workers} threads)")  # fmt: skip
        self.figure("all pods created (Pending)", f"{pods} pods, {pods_s:.1f} s after the "
                    "first create (ReplicaSet/Job controllers; the watches)")  # fmt: skip
        return original

    def service_accounts(self, namespaces: set[str]) -> bool:
        q = urlencode({"fieldSelector": "metadata.name=default"})
        status, body = self.kube.request("GET", f"/api/v1/serviceaccounts?{q}")
        have = {i["metadata"]["namespace"] for i in (body or {}).get("items", [])}
        return status == 200 and namespaces <= have

    # ---- the cycle

    def enforce(self, kubeconfig: str, original: dict[Key, int]) -> None:
        a = self.args
        crossing = set(range(0, a.tenants, a.tenants // a.crossing)[: a.crossing])
        names = {i: f"tenant-{i:03d}" for i in range(a.tenants)}
        ns_crossing = {f"enf-{i:03d}" for i in crossing}
        mine = {k: n for k, n in original.items() if k[1] in ns_crossing}
        others = {k: n for k, n in original.items() if k[1] not in ns_crossing}
        tenants = {names[i]: tenant_obj(i, LIMIT) for i in range(a.tenants)}
        plans = {PLAN: PricePlan.model_validate({"metadata": {"name": PLAN},
                                                 "spec": plan_spec(PRICE)})}  # fmt: skip

        ledger = Ledger.open(f"sqlite:///{self.tmp / 'ledger.db'}")
        self.procs.add("ledger", ledger.close)
        api = CountingWorkloads(load_api_client(kubeconfig))
        enforcer = TimedEnforcer(ledger, api, GpuResources())
        enforcer.durations = []
        sink = StatusSink()
        budgets = BudgetStep(ledger, enforcer, sink, lambda _t: [])
        biller = Biller(ledger)

        now = datetime.now(UTC)
        w1 = now.replace(second=0, microsecond=0) - timedelta(minutes=3)
        w2, w3 = w1 + timedelta(minutes=1), w1 + timedelta(minutes=2)
        if Period.of(w1) != Period.of(now):
            raise RuntimeError("the month began minutes ago; run again in a few minutes")

        def windows(start: datetime, end: datetime, share: Callable[[int], Decimal]) -> None:
            rows = []
            for i, name in names.items():
                rec = GpuUsage(model="NVIDIA H100 80GB HBM3", allocated_ms=ms_for(share(i) * LIMIT),
                               active_ms=0, window_start=start, window_end=end)  # fmt: skip
                rows.append(UsageWindow(name, GPU_SOURCE, f"GPU-{i}", start, end, rec))
            ledger.record_windows(rows)

        def cycle(
            world: Mapping[str, Tenant], until: datetime
        ) -> tuple[float, float, dict[str, BudgetOutcome]]:
            t0 = time.monotonic()
            report = biller.run(datetime.now(UTC), world, plans, until)
            t1 = time.monotonic()
            out = self.loop.run_until_complete(budgets.run(
                world, report, now=datetime.now(UTC), metered_until=until,
                leading=lambda: True))  # fmt: skip
            return t0, t1, out

        # a cycle before: 90 % (crossing) and 40 % (the others) spent, nothing to enforce
        windows(w1, w2, lambda i: Decimal("0.90") if i in crossing else Decimal("0.40"))
        t0, t1, out = cycle(tenants, w2)
        before_s = time.monotonic() - t0
        suspended_before = sum(1 for o in out.values() if o.decision and o.decision.suspended)
        api.take()
        # the cycle that rates the crossing: +12 % (102 %) and +5 % (45 %)
        windows(w2, w3, lambda i: Decimal("0.12") if i in crossing else Decimal("0.05"))
        enforcer.durations = []
        cpu0, limiter0 = self.cpu(), self.limiter()
        t0, t1, out = cycle(tenants, w3)
        t2 = time.monotonic()
        calls = api.take()
        decided = sum(1 for o in out.values() if o.decision and o.decision.suspended)
        problems = [p for o in out.values() for p in o.problems]
        spec_at, status_at = self.watches.wait(dict.fromkeys(mine, 0), timeout=120)
        per_tenant = sorted(enforcer.durations)
        self.figure("cycle before the crossing", f"bill + budget step {before_s:.2f} s, "
                    f"{suspended_before} suspended (baseline)")  # fmt: skip
        self.figure("crossing cycle: bill step", f"{t1 - t0:.2f} s ({a.tenants} statements)")
        self.figure("crossing cycle: budget step", f"{t2 - t1:.2f} s; {decided} decided "
                    f"suspend; {len(problems)} problems")  # fmt: skip
        self.figure("  per tenant (apply, one after another)",
                    f"median {statistics.median(per_tenant):.3f} s, max {per_tenant[-1]:.3f} s, "
                    f"sum {sum(per_tenant):.2f} s over {len(per_tenant)} tenants")  # fmt: skip
        self.figure("  calls", calls_line(calls))
        self.figure("crossing cycle start -> last spec at 0", fmt_s(spec_at - t0))
        self.figure("crossing cycle start -> last workload at 0 (status)",
                    f"{fmt_s(status_at - t0)}   [target <= 5 s]  ({len(mine)} workloads, "
                    f"{sum(mine.values())} pods)")  # fmt: skip
        self.figure("  after the budget step ended", fmt_s(status_at - t2))
        self.controllers(mine, t0, cpu0, limiter0)
        left = self.pods_left(ns_crossing)
        self.figure("pods left in the crossing namespaces", f"{left}")

        # the next cycle: everything at 0, so the suspensions become `suspended`
        enforcer.durations = []
        t0, t1, out = cycle(tenants, w3)
        t2 = time.monotonic()
        calls = api.take()
        states = sorted(str(o.enforcement.state.value) for o in out.values()
                        if o.enforcement is not None)  # fmt: skip
        self.figure("next cycle (keep): budget step", f"{t2 - t1:.2f} s; suspensions: "
                    f"{summarise(states)}; {calls_line(calls)}")  # fmt: skip

        # restore: the limits are raised above the totals
        raised = dict(tenants)
        for i in crossing:
            raised[names[i]] = tenant_obj(i, LIMIT * 10)
        enforcer.durations = []
        cpu0, limiter0 = self.cpu(), self.limiter()
        t0, t1, out = cycle(raised, w3)
        t2 = time.monotonic()
        calls = api.take()
        restored = sum(
            1 for o in out.values() if o.decision and o.decision.action is Action.RESTORE
        )
        spec_at, status_at = self.watches.wait(mine, timeout=180)
        states = sorted(str(o.enforcement.state.value) for o in out.values()
                        if o.enforcement is not None)  # fmt: skip
        self.figure("restore cycle: budget step", f"{t2 - t1:.2f} s; {restored} decided restore;"
                    f" suspensions: {summarise(states)}; {calls_line(calls)}")  # fmt: skip
        self.figure("restore cycle start -> last spec back", fmt_s(spec_at - t0))
        self.figure(
            "restore cycle start -> last workload back (status)",
            f"{fmt_s(status_at - t0)}  ({sum(mine.values())} pods)",
        )
        self.controllers(mine, t0, cpu0, limiter0)
        recorded = self.recorded(ledger)
        wrong = {k: (n, recorded.get(k)) for k, n in mine.items() if recorded.get(k) != n}
        self.figure("recorded replicas = original", f"{len(mine) - len(wrong)} of {len(mine)}"
                    + (f"; off: {list(wrong.items())[:3]}" if wrong else ""))  # fmt: skip

        seen = self.watches.snapshot()
        changed = [k for k in others if seen[k].spec_changes or seen[k].spec != others[k]]
        written = [k for k in others if seen[k].by_kubemeter]
        self.figure("non-crossing tenants' workloads", f"{len(others)} ({a.tenants - len(crossing)}"
                    f" tenants): spec changed on {len(changed)}, written by {FIELD_MANAGER} on "
                    f"{len(written)}")  # fmt: skip
        self.figure("status patches (before restore)", f"{sink.patches}")
        self.figure("watch events seen", f"{self.watches.events()}")

    def controllers(
        self,
        keys: Mapping[Key, int],
        t0: float,
        cpu0: Mapping[str, float],
        limiter0: Mapping[str, tuple[float, float]],
    ) -> None:
        limiter = self.limiter()
        waits = ", ".join(
            f"{verb} {n - limiter0.get(verb, (0, 0))[0]:.0f} waited "
            f"{w - limiter0.get(verb, (0, 0))[1]:.1f} s"
            for verb, (n, w) in sorted(limiter.items())
            if n > limiter0.get(verb, (0, 0))[0]
        )
        text, last = self.watches.lags(list(keys))
        kinds = ", ".join(f"last {kind} {at - t0:.2f} s" for kind, at in last.items())
        self.figure("  per workload", f"{text}; {kinds}")
        span = time.monotonic() - t0
        cpu = {name: (procstat.cpu_s(pid) - cpu0[name]) / span for name, pid in self.pids.items()}
        shares = ", ".join(f"{name} {100 * v:.0f}%" for name, v in
                           sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0.005)  # fmt: skip
        self.figure("  CPU until then", f"{shares} (100% = one core; {os.cpu_count()} here)")
        self.figure("  controller-manager requests (client-side limiter)", waits or "none")

    def limiter(self) -> dict[str, tuple[float, float]]:
        """kube-controller-manager's client-side rate limiter (client-go, all its
        controllers): per verb, (requests, seconds they waited)."""
        out: dict[str, tuple[float, float]] = {}
        try:
            with urllib.request.urlopen(self.cm_metrics, context=self.tls, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if not name.startswith("rest_client_rate_limiter_duration_seconds_"):
                continue
            verb = name.partition('verb="')[2].partition('"')[0]
            n, waited = out.get(verb, (0.0, 0.0))
            if name.startswith("rest_client_rate_limiter_duration_seconds_count"):
                n = float(value)
            elif name.startswith("rest_client_rate_limiter_duration_seconds_sum"):
                waited = float(value)
            out[verb] = (n, waited)
        return out

    def cpu(self) -> dict[str, float]:
        return {name: procstat.cpu_s(pid) for name, pid in self.pids.items()}

    def pods_left(self, namespaces: Iterable[str]) -> int:
        total = 0
        for ns in namespaces:
            status, body = self.kube.request("GET", f"/api/v1/namespaces/{ns}/pods")
            if status != 200:
                return -1
            total += sum(1 for p in body["items"] if not p["metadata"].get("deletionTimestamp"))
        return total

    @staticmethod
    def recorded(ledger: Ledger) -> dict[Key, int]:
        out: dict[Key, int] = {}
        for row in ledger.latest_suspensions().values():
            for w in ledger.suspension_workloads(row.id):
                n = w.replicas if w.kind == "Deployment" else (0 if w.suspend else 1)
                out[(w.kind, w.namespace, w.name)] = n if n is not None else 1
        return out


def summarise(values: Sequence[str]) -> str:
    return ", ".join(f"{v} {values.count(v)}" for v in sorted(set(values))) or "none"


def poll_until(what: str, fn: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.25)


# --------------------------------------------------------------------------- part 2

INTERVAL = timedelta(seconds=15)
STEP = timedelta(seconds=15)
LAG = timedelta(seconds=30)
SCRAPE = timedelta(seconds=15)
BURN_GPUS = 40
BURN_LIMIT = Decimal(1000)
BASE = datetime(2026, 11, 10, 6, tzinfo=UTC)  # on the window grid
RETENTION = timedelta(hours=1)
"""The exporter's --series-retention default: a stopped pod's flat series stay served, so
the scrape after the stop sees its final counter (the harness' default is 0: the tail since
the last scrape would never be metered, and the overshoot read low by up to a scrape)."""


@dataclass
class Burn:
    stop_before: str | None
    grid_s: float
    cycle_s: float
    trigger: str = ""
    crossing_to_zero_s: float = 0.0
    overshoot: Decimal = Decimal(0)
    total: Decimal = Decimal(0)
    cycles: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def burn(db: Path, stop_before: str | None, grid_s: float, cycle_s: float) -> Burn:
    """One tenant burning BURN_GPUS into BURN_LIMIT; `grid_s`: where the pods start against
    the 15 s window grid, `cycle_s`: when the first cycle runs after they start."""
    out = Burn(stop_before, grid_s, cycle_s)
    wall = time.monotonic()
    start = BASE + timedelta(seconds=grid_s)
    tt = timetravel.TimeTravel(f"sqlite:///{db}", start=start, scrape_interval=SCRAPE,
                               config=MeteringConfig(step=STEP, lag=LAG))  # fmt: skip
    try:
        tt.node.allocate = functools.partial(tt.node.allocate, linger=RETENTION)
        tt.add_plan("gpu", plan_spec(PRICE))
        budget: dict[str, str] = {"limit": str(BURN_LIMIT), "enforcement": "scaleDown"}
        if stop_before:
            budget["stopBefore"] = stop_before
        tt.add_tenant("burner", plan="gpu", namespaces=["burner"], budget=budget)
        for i in range(BURN_GPUS // 8):
            tt.workloads.create("Deployment", "burner", f"train-{i}", replicas=8)
        began = tt.now + timedelta(milliseconds=1)  # the harness starts pods 1 ms later
        per_s = PRICE * BURN_GPUS / 3600
        crossing = began + timedelta(seconds=float(BURN_LIMIT / per_s))
        first = tt.now + timedelta(seconds=cycle_s)
        tt.advance(first, every=first - tt.now)
        # coarse until half an hour before (stopBefore's burn rate looks back 15 minutes)
        fine_from = first + (crossing - timedelta(minutes=30) - first) // INTERVAL * INTERVAL
        tt.advance(fine_from, every=timedelta(minutes=5))
        zero: datetime | None = None
        while zero is None:
            tt.advance(tt.now + INTERVAL, every=INTERVAL)
            out.cycles += 1
            if tt.workloads.running() == 0:
                zero = tt.now + timedelta(milliseconds=1)
            if tt.now > crossing + timedelta(hours=1):
                raise RuntimeError(f"never stopped: {tt.kube.status.get('burner')}")
        tt.advance(tt.now + timedelta(minutes=3), every=INTERVAL)  # metering covers the stop
        status = tt.kube.status["burner"]
        enforcement = status.get("enforcement") or {}
        out.trigger = str(enforcement.get("trigger"))
        out.overshoot = Decimal(enforcement.get("overshoot") or 0)
        out.total = Decimal(status["total"])
        out.crossing_to_zero_s = (zero - crossing).total_seconds()
        if enforcement.get("state") != "Suspended":
            out.notes.append(f"state {enforcement.get('state')}")
    finally:
        tt.close()
    out.wall_s = time.monotonic() - wall
    return out


def money_part(args: argparse.Namespace, tmp: Path) -> list[Burn]:
    phases = [(0.0, 15.0)] if args.quick else [(0.0, 15.0), (4.0, 3.0), (8.0, 11.0), (13.0, 7.0)]
    runs: list[Burn] = []
    for stop_before in (None, "1m", "5m"):
        for grid_s, cycle_s in phases:
            db = tmp / f"burn-{stop_before or 'none'}-{grid_s:g}-{cycle_s:g}.db"
            b = burn(db, stop_before, grid_s, cycle_s)
            say(f"burn stopBefore={stop_before or '-'} phase {grid_s:g}/{cycle_s:g} s: "
                f"crossing->0 {b.crossing_to_zero_s:+.1f} s, overshoot {b.overshoot:.2f} USD "
                f"({b.cycles} fine cycles, {b.wall_s:.1f} s wall)")  # fmt: skip
            runs.append(b)
    return runs


def money_report(runs: Sequence[Burn]) -> None:
    per_s = PRICE * BURN_GPUS / 3600
    bound = (INTERVAL + LAG).total_seconds() + 5
    print()
    print(f"Part 2: money, simulated time (step {STEP.seconds} s, lag {LAG.seconds} s, cycle "
          f"every {INTERVAL.seconds} s, scrape {SCRAPE.seconds} s); {BURN_GPUS} H100 x "
          f"{PRICE} USD/GPU-h = {PRICE * BURN_GPUS} USD/h into a {BURN_LIMIT} USD "
          "budget")  # fmt: skip
    print(f"phase = pod start vs the 15 s window grid / first cycle after the pod start; "
          f"target crossing->0 <= interval + lag + 5 s = {bound:g} s")  # fmt: skip
    print(
        f"{'stopBefore':>10} {'phase s':>9} {'trigger':>15} {'crossing->0 s':>13} "
        f"{'overshoot USD':>13} {'= s of burn':>11} {'true USD':>8} {'total USD':>10} "
        f"{'under limit USD':>15}"
    )
    for b in runs:
        under = max(BURN_LIMIT - b.total, Decimal(0))
        true = max(Decimal(b.crossing_to_zero_s) * per_s, Decimal(0))
        print(f"{b.stop_before or '-':>10} {f'{b.grid_s:g}/{b.cycle_s:g}':>9} {b.trigger:>15} "
              f"{b.crossing_to_zero_s:>+13.1f} {b.overshoot:>13.2f} "
              f"{float(b.overshoot / per_s):>11.1f} {true:>8.2f} {b.total:>10} {under:>15}"
              + (f"  ({'; '.join(b.notes)})" if b.notes else ""))  # fmt: skip
    print("true USD: (last pod stopped - usage crossing) x burn rate, from the simulated truth")
    for setting in dict.fromkeys(b.stop_before for b in runs):
        sel = [b for b in runs if b.stop_before == setting]
        c = [b.crossing_to_zero_s for b in sel]
        o = [b.overshoot for b in sel]
        print(f"stopBefore {setting or '-':>3}: crossing->0 {min(c):+.1f} .. {max(c):+.1f} s "
              f"[target <= {bound:g} s]; overshoot {min(o):.2f} .. {max(o):.2f} USD "
              f"({float(min(o) / per_s):.1f} .. {float(max(o) / per_s):.1f} s "
              "of burn)")  # fmt: skip


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 tenants, 100 Deployments, 20 Jobs")
    p.add_argument("--tenants", type=int, default=None, help="tenants = namespaces (100)")
    p.add_argument("--deployments", type=int, default=None, help="GPU Deployments (1000)")
    p.add_argument("--jobs", type=int, default=None, help="GPU Jobs (200)")
    p.add_argument("--crossing", type=int, default=None, help="tenants over budget (20)")
    p.add_argument("--workers", type=int, default=8, help="threads creating objects (8)")
    p.add_argument("--no-kube", action="store_true", help="skip part 1 (the cluster)")
    p.add_argument("--no-money", action="store_true", help="skip part 2 (time travel)")
    p.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, ledgers)")
    args = p.parse_args()
    args.tenants = args.tenants or (10 if args.quick else 100)
    args.deployments = args.deployments or (100 if args.quick else 1000)
    args.jobs = args.jobs if args.jobs is not None else (20 if args.quick else 200)
    args.crossing = args.crossing or (2 if args.quick else 20)
    if not 1 <= args.crossing <= args.tenants or args.deployments < args.tenants:
        p.error("need 1 <= crossing <= tenants <= deployments")

    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="kubemeter-enforce-"))
    procs = Procs()
    ok = False
    kube: KubePart | None = None
    runs: list[Burn] = []
    try:
        say(f"bench: {args.tenants} tenants, {args.deployments} Deployments, {args.jobs} Jobs, "
            f"{args.crossing} crossing; temp dir {tmp}")  # fmt: skip
        if not args.no_kube:
            kube = KubePart(args, tmp, procs)
            kube.run()
        if not args.no_money:
            runs = money_part(args, tmp)
        print()
        print("=" * 78)
        print("kubemeter budget enforcement (real kube-apiserver + controllers; time travel)")
        print("=" * 78)
        if kube is not None:
            print(f"Part 1: Kubernetes, real: {args.tenants} tenants, {args.deployments} GPU "
                  f"Deployments, {args.jobs} GPU Jobs, {args.crossing} tenants cross their "
                  f"{LIMIT} USD budgets in one cycle")  # fmt: skip
            width = max(len(k) for k, _ in kube.figures)
            for key, value in kube.figures:
                print(f"{key:<{width}}  {value}")
        if runs:
            money_report(runs)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        procs.close()
        if ok and not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs and ledgers left in {tmp}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
