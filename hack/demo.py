#!/usr/bin/env python3
"""kubemeter's main job, end to end, on this machine (`make demo`).

Starts the dev cluster (real kube-apiserver + kwok GPU nodes), installs the CRDs and the
example PricePlans and Tenants, runs GPU pods, simulates their GPUs with the exporter
(`--speed 60`: a scenario minute per second, so spend moves), has a real Prometheus scrape
it, runs the operator, posts token events over the events API, and prints
`kubectl get tenants` while spend rises. Ends with `kubectl describe tenant acme` and
`kubemeter invoice acme`. Everything it starts is stopped at the end (or left running with
--keep; stop it later with `make demo-down`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from loader import devcluster, prometheus

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCENARIO = ROOT / "examples" / "scenarios" / "demo-cluster.yaml"
EXAMPLES = [
    "priceplan-gpu-standard.yaml",
    "priceplan-tokens-jpy.yaml",
    "tenant-acme.yaml",
    "tenant-globex.yaml",
]
PODS = [
    ("acme-prod", "trainer-0", 2, {"billing.kubemeter.dev/tenant": "acme"}),
    ("acme-prod", "embedder-0", 1, {"billing.kubemeter.dev/tenant": "acme"}),
    ("acme-dev", "notebook-0", 1, {"billing.kubemeter.dev/tenant": "acme"}),
    ("research", "sweep-0", 1, {}),
]
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def say(message: str) -> None:
    print(f"\n\033[1m== {message}\033[0m", flush=True)


class Demo:
    def __init__(self, state: Path, speed: int) -> None:
        self.state = state
        self.speed = speed
        self.kubectl_bin = str(devcluster.binary_path("kubectl"))
        self.kubeconfig = ""
        self.db = f"sqlite:///{state / 'ledger.db'}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens = {"acme": secrets.token_urlsafe(32), "globex": secrets.token_urlsafe(32)}

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        res = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and res.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        (self.state / f"{name}.pid").write_text(str(self.procs[name].pid))

    def cluster(self) -> None:
        say("starting the dev cluster (kube-apiserver, controllers, kwok GPU nodes)")
        cluster = devcluster.start(self.state / "cluster", controllers=True, gpu_nodes=1)
        self.kubeconfig = cluster.kubeconfig
        print(f"export KUBECONFIG={self.kubeconfig}")

    def install(self) -> None:
        say("installing the CRDs and the example PricePlans and Tenants")
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        for ns in ("kubemeter-system", "acme-prod", "acme-dev", "research", "globex"):
            self.kubectl("create", "namespace", ns, check=False)
        for tenant, token in self.tokens.items():
            self.kubectl(
                "-n",
                "kubemeter-system",
                "delete",
                "secret",
                f"{tenant}-api-token",
                "--ignore-not-found",
            )
            self.kubectl(
                "-n",
                "kubemeter-system",
                "create",
                "secret",
                "generic",
                f"{tenant}-api-token",
                f"--from-literal=token={token}",
            )
        for name in EXAMPLES:
            print(self.kubectl("apply", "-f", str(ROOT / "examples" / name)).strip())
        say("running GPU pods on the fake node gpu-node-0")
        for ns, name, gpus, labels in PODS:
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "nodeName": "gpu-node-0",
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.example/gpu-workload:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            }
            self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        for ns, name, _, _ in PODS:
            self.kubectl("-n", ns, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")
        print(
            self.kubectl(
                "get", "pods", "-A", "-o", "wide", "--field-selector", "spec.nodeName=gpu-node-0"
            )
        )

    def run_components(self) -> tuple[str, str]:
        exporter_port, events_port = prometheus.free_port(), prometheus.free_port()
        say(f"exporter: simulated GPUs at {self.speed}x (curl 127.0.0.1:{exporter_port}/metrics)")
        self.spawn(
            "exporter",
            [
                str(BIN / "kubemeter-exporter"),
                "--simulate",
                str(SCENARIO),
                "--speed",
                str(self.speed),
                "--interval",
                "1s",
                "--kubeconfig",
                self.kubeconfig,
                "--node-name",
                "gpu-node-0",
                "--listen",
                f"127.0.0.1:{exporter_port}",
            ],
        )
        prom = prometheus.PrometheusServer(
            [f"127.0.0.1:{exporter_port}"],
            data_dir=self.state / "prometheus",
            scrape_interval="2s",
        )
        prom.start()
        assert prom.proc is not None  # start() returns only once the process runs
        self.procs["prometheus"] = prom.proc
        (self.state / "prometheus.pid").write_text(str(prom.proc.pid))
        print(f"prometheus: {prom.url}")
        say("the operator: metering every 5 s into " + self.db)
        self.spawn(
            "operator",
            [
                str(BIN / "kubemeter"),
                "operator",
                "--kubeconfig",
                self.kubeconfig,
                "--prometheus-url",
                prom.url,
                "--db",
                self.db,
                "--interval",
                "5",
                "--lag",
                "6",
                "--events-listen",
                f"127.0.0.1:{events_port}",
                "--metrics-port",
                "0",
                "--standalone",
                # the simulated GPUs run `speed` times faster than wall time: so may the
                # counters, within the physics bounds
                "--simulation-speed",
                str(self.speed),
            ],
        )
        self.topup()
        return prom.url, f"http://127.0.0.1:{events_port}"

    def topup(self) -> None:
        subprocess.run(
            [
                str(BIN / "kubemeter"),
                "wallet",
                "topup",
                "globex",
                "50000",
                "--currency",
                "JPY",
                "--key",
                "demo-initial-topup",
                "--db",
                self.db,
            ],
            check=True,
            capture_output=True,
        )
        print("globex prepaid 50000 JPY")

    def post_tokens(self, events: str, tenant: str, batch: int) -> str:
        now = datetime.now(UTC).isoformat()
        records = [
            {
                "id": f"demo-{tenant}-{batch}-{i}",
                "kind": "tokens",
                "model": LLAMA,
                "timestamp": now,
                "promptTokens": 180_000,
                "completionTokens": 40_000,
                "cachedPromptTokens": 60_000,
            }
            for i in range(20)
        ]
        req = urllib.request.Request(
            f"{events}/v1/events",
            data=json.dumps(records).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.tokens[tenant]}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return f"{resp.status} {resp.read().decode()}"
        except (urllib.error.URLError, OSError) as exc:
            return f"not yet ({exc})"

    def wait_ready(self, events: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{events}/healthz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise SystemExit(f"the operator did not start; see {self.state / 'operator.log'}")

    def watch(self, events: str, duration: float) -> None:
        self.wait_ready(events)
        say("watching spend rise: kubectl get tenants")
        end, batch = time.monotonic() + duration, 0
        while time.monotonic() < end:
            for tenant in ("acme", "globex"):
                print(
                    f"POST /v1/events ({tenant}, 20 events): "
                    f"{self.post_tokens(events, tenant, batch)}"
                )
            batch += 1
            time.sleep(10)
            print(datetime.now(UTC).strftime("%H:%M:%S"))
            print(self.kubectl("get", "tenants", "-o", "wide"))

    def report(self) -> None:
        say("kubectl describe tenant acme")
        print(self.kubectl("describe", "tenant", "acme"))
        say("kubemeter invoice acme (running period, from the ledger)")
        period = datetime.now(UTC).strftime("%Y-%m")
        res = subprocess.run(
            [
                str(BIN / "kubemeter"),
                "invoice",
                "acme",
                "--period",
                period,
                "--db",
                self.db,
                "--format",
                "table",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        print(res.stdout or res.stderr)
        res = subprocess.run(
            [str(BIN / "kubemeter"), "unassigned", "--period", period, "--db", self.db],
            capture_output=True,
            text=True,
            check=False,
        )
        say("kubemeter unassigned (usage no Tenant owns)")
        print(res.stdout or res.stderr)

    def check(self) -> None:
        """Fail the demo when it showed nothing: no GPU time metered for acme, or deltas
        held back (a speed the metering bounds were not told about)."""
        from kubemeter_operator.ledger import Ledger
        from kubemeter_operator.usage import Period

        period = Period.of(datetime.now(UTC))
        with Ledger.open(self.db) as ledger:
            held = ledger.quarantined()
            gpu_ms = sum(q.allocated_ms for key, q in ledger.period_totals("acme", period).items()
                         if key.kind == "gpu")  # fmt: skip
        if held or not gpu_ms:
            raise SystemExit(
                f"demo: {gpu_ms} GPU ms metered for acme, {len(held)} deltas quarantined "
                f"(see {self.state / 'operator.log'})"
            )
        hours = Decimal(gpu_ms) / 3_600_000
        say(f"checked: {hours:.2f} GPU-hours metered for acme, none quarantined")

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            (self.state / f"{name}.pid").unlink(missing_ok=True)
        devcluster.stop(self.state / "cluster")


def down(state: Path) -> int:
    for pidfile in state.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        pidfile.unlink()
    devcluster.stop(state / "cluster")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=ROOT / ".demo")
    parser.add_argument("--duration", type=float, default=90, help="seconds to watch (90)")
    parser.add_argument("--speed", type=int, default=60, help="simulated seconds per second")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--down", action="store_true", help="stop what --keep left running")
    args = parser.parse_args()
    state: Path = args.state.resolve()
    if args.down:
        return down(state)
    if state.exists() and not any(state.glob("*.pid")):
        shutil.rmtree(state)  # a fresh ledger, cluster and Prometheus each run
    state.mkdir(parents=True, exist_ok=True)
    demo = Demo(state, args.speed)
    try:
        demo.cluster()
        demo.install()
        _prom, events = demo.run_components()
        demo.watch(events, args.duration)
        demo.report()
        demo.check()
    finally:
        if args.keep:
            say(f"left running; KUBECONFIG={demo.kubeconfig}; stop with `make demo-down`")
        else:
            demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
