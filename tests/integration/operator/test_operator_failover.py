"""One active operator, elected by a Lease, with real parts: two `kubemeter operator`
processes on one PostgreSQL ledger, against a real kube-apiserver (kwok GPU pods) and a
real Prometheus scraping the simulated exporter.

The leader is SIGKILLed twice and SIGSTOPped once (a paused leader must not write after it
lost the Lease). Afterwards the ledger holds exactly what Prometheus' counters say (nothing
lost, nothing twice), the prepaid wallet paid each period once, and the failover times are
printed. A second test starts an operator while the API server is down and brings the API
server back: the operator starts without a restart, its metrics registered once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubemeter_operator.billing import statements
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import CHECKPOINT_NAME
from kubemeter_operator.usage import Period

from support.cluster import KubeCluster, load_devcluster
from support.paths import REPO_ROOT
from support.postgres import create_database, drop_database
from support.prometheus import PrometheusServer, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SCENARIO = REPO_ROOT / "tests" / "integration" / "e2e" / "scenario.yaml"
# Namespaces of this test alone: Tenants that other tests of the session leave behind claim
# the e2e scenario's namespaces, and would take this test's usage.
NAMESPACES = {"acme-prod": "fo-acme", "globex-ml": "fo-globex", "orphan": "fo-orphan"}
HELD_S = 60  # each scenario pod holds its GPU for 60 s (speed 1)
LEASE_NS = "kubemeter"
LEASE = "kubemeter-operator"
DURATION_S, RENEW_S = 6.0, 1.5
PLAN = {
    "apiVersion": "kubemeter.dev/v1alpha1",
    "kind": "PricePlan",
    "metadata": {"name": "failover-usd"},
    "spec": {
        "currency": "USD",
        "platformFee": "10",
        "meters": [{"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
                    "pricing": {"model": "flat", "unitPrice": "360"}}],
    },
}  # fmt: skip
TENANT = {
    "apiVersion": "kubemeter.dev/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "failover-acme"},
    "spec": {"pricePlanRef": {"name": "failover-usd"}, "namespaces": ["fo-acme"],
             "wallet": {"enabled": True}},
}  # fmt: skip


@dataclass
class Operator:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> Operator:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def holder(k: KubeCluster) -> str | None:
    res = k.kubectl("-n", LEASE_NS, "get", "lease", LEASE, "-o", "json")
    if res.returncode != 0:
        return None
    spec: dict[str, Any] = json.loads(res.stdout).get("spec") or {}
    value = spec.get("holderIdentity")
    return str(value) if value else None


def operator_argv(k: KubeCluster, prom: PrometheusServer, db: str, name: str) -> list[str]:
    return [
        str(BIN / "kubemeter"), "operator", "--kubeconfig", k.kubeconfig,
        "--prometheus-url", prom.url, "--db", db, "--interval", "1", "--lag", "3",
        "--events-listen", f"127.0.0.1:{free_port()}", "--metrics-port", str(free_port()),
        "--lease-namespace", LEASE_NS, "--lease-duration", str(DURATION_S),
        "--lease-renew", str(RENEW_S), "--identity", name, "--log-level", "INFO",
    ]  # fmt: skip


def _scenario(path: Path) -> Path:
    """The e2e scenario with this test's namespaces."""
    text = SCENARIO.read_text()
    for old, new in NAMESPACES.items():
        text = text.replace(f"namespace: {old}", f"namespace: {new}")
        text = text.replace(f"pod: {old}/", f"pod: {new}/")
    path.write_text(text)
    return path


@pytest.fixture
def world(kube_cluster: KubeCluster, postgres_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    k = kube_cluster
    k.kubectl_ok("apply", "-f", str(REPO_ROOT / "crds"))
    k.kubectl_ok("wait", "--for=condition=Established", "crd/tenants.kubemeter.dev",
                 "crd/priceplans.kubemeter.dev", "--timeout=60s")  # fmt: skip
    for ns in (LEASE_NS, *NAMESPACES.values()):
        k.kubectl("create", "namespace", ns)
    k.kubectl("-n", LEASE_NS, "delete", "lease", LEASE, "--ignore-not-found")
    k.apply(PLAN)
    k.apply(TENANT)
    claimed = [t["metadata"]["name"] for t in k.get_json("tenants")["items"]
               if set(t["spec"].get("namespaces") or ()) & set(NAMESPACES.values())]  # fmt: skip
    assert claimed == [TENANT["metadata"]["name"]], claimed
    scenario = _scenario(tmp_path / "scenario.yaml")
    for ns, pod in (("fo-acme", "train-0"), ("fo-globex", "infer-0"), ("fo-orphan", "stray-0")):
        k.apply({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": pod, "namespace": ns},
                 "spec": {"nodeName": "gpu-node-0", "containers": [{
                     "name": "main", "image": "registry.example/gpu:1",
                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})  # fmt: skip
    url, dbname = create_database(postgres_url)
    env = {**os.environ, "KUBECONFIG": k.kubeconfig}
    exporter_port = free_port()
    exporter_log = open(tmp_path / "exporter.log", "ab")  # noqa: SIM115 - the child's
    exporter: list[subprocess.Popen[bytes]] = []
    world: dict[str, Any] = {"k": k, "db": url}

    def start_exporter() -> None:
        """The simulated GPUs start: the scenario's 60 s run from now."""
        exporter.append(subprocess.Popen(
            [str(BIN / "kubemeter-exporter"), "--simulate", str(scenario), "--speed", "1",
             "--interval", "20ms", "--listen", f"127.0.0.1:{exporter_port}", "--node-name",
             "gpu-node-0", "--no-kube", "--log-level", "WARNING"],
            stdout=exporter_log, stderr=subprocess.STDOUT, env=env,
        ))  # fmt: skip
        world["started"] = time.monotonic()

    prom = PrometheusServer([f"127.0.0.1:{exporter_port}"], data_dir=tmp_path / "prom")
    ops = {n: Operator(n, operator_argv(k, prom, url, n), tmp_path / f"operator-{n}.log", env)
           for n in ("alpha", "beta")}  # fmt: skip
    try:
        prom.start()
        with Ledger.open(url) as ledger:
            ledger.topup("failover-acme", Decimal(500), "USD", "seed")
        world.update(prom=prom, ops=ops, start_exporter=start_exporter)
        yield world
    finally:
        for op in ops.values():
            op.stop()
            sys.stderr.write(f"\n--- operator {op.name} ---\n{op.text()[-3000:]}\n")
        for proc in exporter:
            proc.terminate()
            proc.wait(10)
        exporter_log.close()
        prom.close()
        drop_database(postgres_url, dbname)


def failover(k: KubeCluster, ops: dict[str, Operator], sig: int) -> tuple[str, float]:
    """Kill (or pause) the current leader; return the new leader and the failover time."""
    leader = wait_until("a leader", lambda: holder(k), timeout=30)
    other = next(n for n in ops if n != leader)
    assert ops[other].alive(), f"{other} is not running"
    t0 = time.monotonic()
    ops[leader].signal(sig)
    wait_until(f"{other} to take over from {leader}", lambda: holder(k) == other, timeout=30)
    return leader, time.monotonic() - t0


def test_two_operators_one_leader_and_failover(world: dict[str, Any]) -> None:
    k, prom, ops = world["k"], world["prom"], world["ops"]
    ops["alpha"].start()
    wait_until("alpha to lead", lambda: holder(k) == "alpha", timeout=60)
    # The metering start (the first checkpoint) comes before the GPUs run: counters found
    # at the metering start are its baseline and never billed, so all of this is billed.
    with Ledger.open(world["db"]) as ledger:
        wait_until("the first metering checkpoint",
                   lambda: ledger.get_checkpoint(CHECKPOINT_NAME), timeout=60)  # fmt: skip
    world["start_exporter"]()
    ops["beta"].start()
    time.sleep(6)
    times: list[tuple[str, float]] = []
    dead, took = failover(k, ops, signal.SIGKILL)  # 1: SIGKILL the leader
    times.append((f"SIGKILL {dead}", took))
    ops[dead].start()
    time.sleep(6)
    dead, took = failover(k, ops, signal.SIGKILL)  # 2: and again, the other one
    times.append((f"SIGKILL {dead}", took))
    ops[dead].start()
    time.sleep(6)
    paused, took = failover(k, ops, signal.SIGSTOP)  # 3: a paused leader
    times.append((f"SIGSTOP {paused}", took))
    time.sleep(DURATION_S)
    ops[paused].signal(signal.SIGCONT)  # it wakes up with a stale Lease: it must not act
    sys.stderr.write("".join(f"\nfailover after {w}: {t:.1f} s" for w, t in times) + "\n")
    print("failover times:", ", ".join(f"{w} {t:.1f}s" for w, t in times))
    for _, took in times:
        assert took <= DURATION_S + 2 * RENEW_S + 2, times

    # the scenario ends after HELD_S; the counters then stay flat
    remaining = HELD_S - (time.monotonic() - world["started"]) + 4
    if remaining > 0:
        time.sleep(remaining)
    truth = {
        r["metric"]["namespace"]: int(float(r["value"][1]))
        for r in prom.query(
            "sum by (namespace) (last_over_time(kubemeter_gpu_allocated_milliseconds_total[30m]))"
        )
    }
    period = Period.of(datetime.now(UTC))
    with Ledger.open(world["db"]) as ledger:

        def gpu_ms(tenant: str) -> int:
            totals = ledger.period_totals(tenant, period)
            return sum(q.allocated_ms for key, q in totals.items() if key.kind == "gpu")

        want = {"failover-acme": truth["fo-acme"],
                "_unassigned": truth["fo-globex"] + truth["fo-orphan"]}  # fmt: skip
        seen: dict[str, int] = {}

        def converged() -> bool:
            seen.update({t: gpu_ms(t) for t in want})
            return seen == want

        try:
            wait_until("the ledger to hold exactly Prometheus' counters", converged, 60)
        except pytest.fail.Exception:
            raise AssertionError(f"ledger {seen} != Prometheus {want}") from None
        assert abs(truth["fo-acme"] - HELD_S * 1000) <= HELD_S  # within 0.1 %
        # the wallet paid the period once: what it charges, no more
        statement = statements.running_statement(ledger, "failover-acme", period)

        def paid() -> Decimal:
            return sum((s.paid for s in ledger.settlements("failover-acme")
                        if s.period == str(period)), Decimal(0))  # fmt: skip

        wait_until("the wallet to be settled", lambda: paid() == statement.total, timeout=30)
        wallet = ledger.wallet("failover-acme")
        assert wallet.topped_up - wallet.taken == wallet.balance
        assert wallet.taken == statement.total
    # every replica started; the paused one came back as a standby and acted on nothing
    assert ops["alpha"].alive()
    assert ops["beta"].alive()
    assert all("DuplicateTimeseries" not in op.text() for op in ops.values())


def _restart_api_server(k: KubeCluster, down_s: float, while_down: Callable[[], None]) -> None:
    """Stop the session's kube-apiserver, run `while_down`, wait, start it again."""
    assert k.dir is not None
    dev = load_devcluster()
    d = Path(k.dir)
    pids = dev._load_pids(d)
    pid = pids["kube-apiserver"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while dev._pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    while_down()
    time.sleep(down_s)
    new = dev._spawn(d, "kube-apiserver", [a.decode() for a in argv], True)
    pids["kube-apiserver"] = new
    dev._save_pids(d, pids)
    wait_until(
        "the API server to be ready again",
        lambda: k.kubectl("get", "--raw", "/readyz").returncode == 0,
        timeout=60,
    )


def test_start_up_survives_an_api_server_restart(world: dict[str, Any]) -> None:
    k, ops = world["k"], world["ops"]
    if not k.managed:
        pytest.skip("needs the test session's own control plane (it restarts the API server)")
    alpha = ops["alpha"]
    _restart_api_server(k, down_s=6, while_down=alpha.start)
    wait_until("alpha to lead", lambda: holder(k) == "alpha", timeout=90)
    wait_until(
        "alpha to write the Tenant's status",
        lambda: k.get_json("tenant", "failover-acme").get("status", {}).get("period"),
        timeout=60,
    )
    assert alpha.alive()
    assert alpha.starts == 1  # no restart of the process
    log = alpha.text()
    assert "operator start failed" in log  # it met the outage ...
    assert "DuplicateTimeseries" not in log  # ... and retried cleanly
