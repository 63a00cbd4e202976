#!/usr/bin/env python3
"""kubemeter's main job, end to end, on this machine (`make demo`).

Starts the dev cluster (real kube-apiserver + kwok GPU nodes), installs the CRDs and the
example PricePlans and Tenants, runs GPU pods and acme's GPU Deployment, simulates their
GPUs (the exporter for the bare pods, hack/live_gpus.py for the Deployment's pods, both at
`--speed 60`: a scenario minute per second, so spend moves), has a real Prometheus scrape
them, runs the operator (with its admission webhook), posts token events over the events
API, and prints `kubectl get tenants` while spend rises.

Then a budget stops the burn: acme's budget is small with `scaleDown`; its 80 % and 100 %
Events appear, its GPU Deployment goes to 0 (its non-GPU one stays), `kubectl get tenants`
says Suspended, the allowance endpoint answers 402 (so the demo's "gateway" stops sending
acme tokens), and a new GPU pod is denied by admission. The demo raises the limit and the
Deployment comes back to its 4 replicas. Ends with `kubectl describe tenant acme` and
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
from typing import Any

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
PODS = [  # bare pods, their GPUs simulated by the exporter (examples/scenarios/demo-cluster.yaml)
    ("acme-prod", "embedder-0", 1, {"billing.kubemeter.dev/tenant": "acme"}),
    ("research", "sweep-0", 1, {}),
]
ACME = {"billing.kubemeter.dev/tenant": "acme"}
TRAINER_REPLICAS = 4
ACME_LIMIT, RAISED_LIMIT = "120", "100000"  # USD: the platform fee alone is 89.10
WEBHOOK = "kubemeter-admission"


def deployment(name: str, replicas: int, resources: dict[str, str]) -> dict[str, Any]:
    labels = {**ACME, "app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "acme-prod"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": "gpu-node-0",
                    "containers": [{"name": "main", "image": "registry.example/train:1",
                                    "resources": {"limits": resources}}],
                },
            },
        },
    }  # fmt: skip


def webhook_configuration(port: int) -> dict[str, Any]:
    """The chart's webhook (templates/admission-webhook.yaml), pointed at the local operator;
    the operator fills in its caBundle."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "gpu.admission.kubemeter.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate"},
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                 "resources": ["pods"], "scope": "Namespaced"},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["deployments", "statefulsets", "deployments/scale",
                               "statefulsets/scale"], "scope": "Namespaced"},
                {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["jobs", "cronjobs"], "scope": "Namespaced"},
            ],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubemeter.dev/tenant", "operator": "Exists"}]},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }  # fmt: skip


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
        self.denied = False

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
        say(f"acme: a GPU Deployment (trainer, {TRAINER_REPLICAS} x 1 H100) and a web one (no GPU)")
        for body in (deployment("trainer", TRAINER_REPLICAS, {"nvidia.com/gpu": "1"}),
                     deployment("web", 1, {"cpu": "100m"})):  # fmt: skip
            self.kubectl("apply", "-f", "-", stdin=json.dumps(body))
        self.kubectl("-n", "acme-prod", "rollout", "status", "deployment/trainer", "--timeout=60s")
        say(f"acme gets a small budget: {ACME_LIMIT} USD a month, scaleDown at 100 %")
        budget = {"spec": {"budget": {"limit": ACME_LIMIT, "alertThresholds": [50, 80, 100],
                                      "enforcement": "scaleDown"}}}  # fmt: skip
        print(self.kubectl("patch", "tenant", "acme", "--type", "merge", "-p",
                           json.dumps(budget)).strip())  # fmt: skip
        print(
            self.kubectl(
                "get", "pods", "-A", "-o", "wide", "--field-selector", "spec.nodeName=gpu-node-0"
            )
        )

    def run_components(self) -> tuple[str, str]:
        exporter_port, events_port = prometheus.free_port(), prometheus.free_port()
        live_port, admission_port = prometheus.free_port(), prometheus.free_port()
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
        self.spawn(
            "live-gpus",
            [sys.executable, str(ROOT / "hack" / "live_gpus.py"), "--kubeconfig",
             self.kubeconfig, "--namespaces", "acme-prod", "--port", str(live_port),
             "--speed", str(self.speed)],
        )  # fmt: skip
        prom = prometheus.PrometheusServer(
            [f"127.0.0.1:{exporter_port}", f"127.0.0.1:{live_port}"],
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
                # the admission webhook, on this machine (the chart serves it in-cluster)
                "--admission-listen",
                f"127.0.0.1:{admission_port}",
                "--admission-webhook-name",
                WEBHOOK,
                "--admission-cert-secret",
                "kubemeter-system/kubemeter-admission-cert",
                "--admission-hosts",
                "127.0.0.1",
            ],
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(webhook_configuration(admission_port)))
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

    def allowance(self, events: str, tenant: str) -> tuple[int, dict[str, Any]]:
        """What an AI gateway asks before it lets a request through (README, "Allowance
        for AI gateways"): 200, or 402 once the budget is spent."""
        req = urllib.request.Request(
            f"{events}/v1/tenants/{tenant}/allowance",
            headers={"Authorization": f"Bearer {self.tokens[tenant]}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError) as exc:
            return 0, {"error": str(exc)}

    def tenant(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.kubectl("get", "tenant", name, "-o", "json"))
        return body

    def watch(self, events: str, duration: float) -> None:
        """Spend rises; the "gateway" sends acme tokens only while its allowance says 200.
        Watches at least `duration` seconds, and until acme's GPU work is stopped."""
        self.wait_ready(events)
        say("watching spend rise: kubectl get tenants")
        start, batch = time.monotonic(), 0
        while time.monotonic() < start + max(duration, 600):
            for tenant in ("acme", "globex"):
                code, _ = self.allowance(events, tenant)
                if code == 402:
                    print(f"GET /v1/tenants/{tenant}/allowance: 402 (the gateway holds them)")
                    continue
                print(
                    f"POST /v1/events ({tenant}, 20 events): "
                    f"{self.post_tokens(events, tenant, batch)}"
                )
            batch += 1
            time.sleep(10)
            print(datetime.now(UTC).strftime("%H:%M:%S"))
            print(self.kubectl("get", "tenants", "-o", "wide"))
            state = (self.tenant("acme").get("status", {}).get("enforcement") or {}).get("state")
            if state == "Suspended" and time.monotonic() >= start + duration:
                return
        raise SystemExit(f"demo: acme was never suspended; see {self.state / 'operator.log'}")

    def enforcement(self, events: str) -> None:
        say("acme's budget is spent: its GPU Deployment is at 0, the web one untouched")
        print(self.kubectl("get", "deployments", "-n", "acme-prod"))
        print(self.kubectl("get", "events", "-n", "default", "--field-selector",
                           "involvedObject.name=acme", "--sort-by=.lastTimestamp",
                           "-o", "custom-columns=REASON:.reason,MESSAGE:.message"))  # fmt: skip
        status = self.tenant("acme")["status"]
        shown = {k: status.get(k) for k in ("phase", "enforcement", "suspendedWorkloads")}
        print(json.dumps(shown, indent=2))
        code, body = self.allowance(events, "acme")
        say(f"an AI gateway asks GET /v1/tenants/acme/allowance: {code}")
        print(json.dumps(body, indent=2))
        say("a new GPU pod in acme-prod is denied by the admission webhook")
        pod = deployment("extra", 1, {"nvidia.com/gpu": "1"})["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "extra-0", "namespace": "acme-prod",
                            "labels": pod["metadata"]["labels"]},
               "spec": pod["spec"]}  # fmt: skip
        # as one of acme's developers: the operator runs with this kubeconfig's admin user,
        # and the webhook lets the operator's own requests through (it restores workloads)
        as_user = ["--as=acme-developer", "--as-group=system:masters"]
        res = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *as_user, "apply", "-f", "-"],
            input=json.dumps(pod), capture_output=True, text=True, check=False,
        )  # fmt: skip
        print(f"$ kubectl --as=acme-developer apply -f gpu-pod.yaml\n{res.stdout}{res.stderr}")
        self.denied = res.returncode != 0 and "denied the request" in res.stderr
        say(f"the limit is raised to {RAISED_LIMIT} USD: the Deployment comes back")
        patch = {"spec": {"budget": {"limit": RAISED_LIMIT}}}
        print(self.kubectl("patch", "tenant", "acme", "--type", "merge", "-p",
                           json.dumps(patch)).strip())  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(5)
            spec = json.loads(self.kubectl("get", "deployment", "trainer", "-n", "acme-prod",
                                           "-o", "json"))["spec"]  # fmt: skip
            if spec["replicas"] == TRAINER_REPLICAS:
                break
        print(self.kubectl("-n", "acme-prod", "rollout", "status", "deployment/trainer",
                           "--timeout=60s", check=False))  # fmt: skip
        print(self.kubectl("get", "deployments", "-n", "acme-prod"))
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
        """Fail the demo when it showed nothing: no GPU time metered for acme, deltas held
        back (a speed the metering bounds were not told about), no suspension and restore,
        or no admission denial."""
        from kubemeter_operator.ledger import Ledger
        from kubemeter_operator.usage import Period

        period = Period.of(datetime.now(UTC))
        with Ledger.open(self.db) as ledger:
            held = ledger.quarantined()
            gpu_ms = sum(q.allocated_ms for key, q in ledger.period_totals("acme", period).items()
                         if key.kind == "gpu")  # fmt: skip
            suspension = ledger.latest_suspensions().get("acme")
        replicas = json.loads(self.kubectl("get", "deployment", "trainer", "-n", "acme-prod",
                                           "-o", "json"))["spec"]["replicas"]  # fmt: skip
        problems = []
        if held or not gpu_ms:
            problems.append(f"{gpu_ms} GPU ms metered for acme, {len(held)} deltas quarantined")
        if suspension is None or suspension.state != "restored":
            problems.append(f"acme's suspension: {suspension}")
        if replicas != TRAINER_REPLICAS:
            problems.append(f"trainer has {replicas} replicas, not {TRAINER_REPLICAS}")
        if not self.denied:
            problems.append("the new GPU pod was not denied")
        if problems:
            raise SystemExit(f"demo: {'; '.join(problems)} (see {self.state / 'operator.log'})")
        assert suspension is not None
        hours = Decimal(gpu_ms) / 3_600_000
        say(
            f"checked: {hours:.2f} GPU-hours metered for acme, none quarantined; suspended "
            f"with an overshoot of {suspension.overshoot} USD, restored to {replicas} replicas"
        )

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
        demo.enforcement(events)
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
