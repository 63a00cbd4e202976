"""End to end: real kube-apiserver with kwok GPU pods, the exporter simulating their GPUs,
a real Prometheus scraping it and a vLLM-style token counter, the operator (kopf) metering
into a SQLite ledger, and token events posted over HTTP.

Along the way the operator is killed with SIGKILL twice and Prometheus is stopped for a few
cycles. At the end, for each tenant, the Tenant status, `kubemeter invoice` and `kubemeter
quote` over the same usage agree to the cent, and the metered GPU milliseconds match the
scenario's truth within 0.1 % (and Prometheus' final counter values exactly).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

from support.cluster import KubeCluster
from support.prometheus import PrometheusServer, free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.yaml"
BIN = Path(sys.executable).parent
SPEED = 2  # simulated seconds per real second
HELD_MS = 60_000  # each pod holds its GPU for 60 s of scenario time (see scenario.yaml)
H100 = "NVIDIA H100 80GB HBM3"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

PLANS: list[dict[str, Any]] = [
    {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "PricePlan",
        "metadata": {"name": "e2e-usd"},
        "spec": {
            "currency": "USD",
            "platformFee": "10",
            "meters": [
                {
                    "name": "gpu",
                    "kind": "gpuTime",
                    "unit": "gpu-hour",
                    "gpuModel": H100,
                    "pricing": {"model": "flat", "unitPrice": "360"},
                },
                {
                    "name": "prompt",
                    "kind": "promptTokens",
                    "unit": "1k-tokens",
                    "pricing": {"model": "flat", "unitPrice": "0.50"},
                },
                {
                    "name": "completion",
                    "kind": "completionTokens",
                    "unit": "1k-tokens",
                    "pricing": {"model": "flat", "unitPrice": "1.50"},
                },
            ],
        },
    },
    {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "PricePlan",
        "metadata": {"name": "e2e-eur"},
        "spec": {
            "currency": "EUR",
            "platformFee": "5",
            "meters": [
                {
                    "name": "gpu-active",
                    "kind": "gpuTime",
                    "unit": "gpu-hour",
                    "gpuModel": H100,
                    "basis": "active",
                    "pricing": {"model": "flat", "unitPrice": "720"},
                },
                {
                    "name": "prompt",
                    "kind": "promptTokens",
                    "unit": "1k-tokens",
                    "source": {"metric": "vllm:prompt_tokens_total"},
                    "pricing": {"model": "flat", "unitPrice": "0.20"},
                },
                {
                    "name": "completion",
                    "kind": "completionTokens",
                    "unit": "1k-tokens",
                    "source": {"metric": "vllm:generation_tokens_total"},
                    "pricing": {"model": "flat", "unitPrice": "0.60"},
                },
            ],
        },
    },
]

TOKENS = {  # strong tokens: 32+ random-looking bytes (weak Secrets are refused)
    "acme": "Zq8fK2mV7xR4tW9pL3nB6hJ1sD5gA0cE-acme",
    "globex": "Y7uI3oP9aS2dF6gH1jK5lZ8xC4vB0nM-globex",
}


def tenant(name: str, plan: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "pricePlanRef": {"name": plan},
            "namespaces": [namespace],
            "apiTokenSecretRef": {"namespace": "kubemeter", "name": f"{name}-token"},
            **extra,
        },
    }


TENANTS = [
    tenant(
        "acme",
        "e2e-usd",
        "acme-prod",
        discountPercent="10",
        budget={"limit": "1000", "alertThresholds": [50, 80, 100]},
    ),
    tenant("globex", "e2e-eur", "globex-ml", wallet={"enabled": True}),
]

PODS = [("acme-prod", "train-0"), ("globex-ml", "infer-0"), ("orphan", "stray-0")]


def gpu_pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "nodeName": "gpu-node-0",
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/gpu-job:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


def serve_text_exposition(
    registry: prometheus_client.CollectorRegistry, port: int
) -> http.server.ThreadingHTTPServer:
    """Serve `registry` in the classic text format, as vLLM does (prometheus_client's own
    server would negotiate OpenMetrics, which escapes the ':' in vLLM's metric names)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = prometheus_client.generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


@dataclass
class Proc:
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def post(url: str, token: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def kubemeter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubemeter"), *args], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture
def world(kube_cluster: KubeCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    k = kube_cluster
    k.kubectl_ok("apply", "-f", str(HERE.parents[2] / "crds"))
    k.kubectl_ok(
        "wait",
        "--for=condition=Established",
        "crd/tenants.kubemeter.dev",
        "crd/priceplans.kubemeter.dev",
        "--timeout=60s",
    )
    for ns in ("kubemeter", "acme-prod", "globex-ml", "orphan"):
        k.kubectl("create", "namespace", ns)
    for name, token in TOKENS.items():
        k.kubectl("-n", "kubemeter", "delete", "secret", f"{name}-token", "--ignore-not-found")
        k.kubectl_ok(
            "-n",
            "kubemeter",
            "create",
            "secret",
            "generic",
            f"{name}-token",
            f"--from-literal=token={token}",
        )
    for obj in [*PLANS, *TENANTS]:
        k.apply(obj)
    for ns, name in PODS:
        k.apply(gpu_pod(ns, name))
    for ns, name in PODS:
        k.kubectl_ok("-n", ns, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")

    # a vLLM-style token counter, as Prometheus' kubernetes_sd relabelling would label it
    registry = prometheus_client.CollectorRegistry()
    labels = ["model_name", "namespace", "pod"]
    prompt = prometheus_client.Counter("vllm:prompt_tokens", "", labels, registry=registry)
    generation = prometheus_client.Counter("vllm:generation_tokens", "", labels, registry=registry)
    vllm_port = free_port()
    vllm_server = serve_text_exposition(registry, vllm_port)
    vllm_thread = threading.Thread(target=vllm_server.serve_forever, daemon=True)
    vllm_thread.start()
    for counter in (prompt, generation):
        counter.labels(MODEL, "globex-ml", "infer-0").inc(7000)  # history: never billed

    env = {**os.environ, "KUBECONFIG": k.kubeconfig}
    exporter_port = free_port()
    exporter = Proc(
        [
            str(BIN / "kubemeter-exporter"),
            "--simulate",
            str(SCENARIO),
            "--speed",
            str(SPEED),
            "--interval",
            "20ms",
            "--listen",
            f"127.0.0.1:{exporter_port}",
            "--kubeconfig",
            k.kubeconfig,
            "--node-name",
            "gpu-node-0",
            "--log-level",
            "WARNING",
        ],
        tmp_path / "exporter.log",
        env,
    )
    prom = PrometheusServer(
        [f"127.0.0.1:{exporter_port}", f"127.0.0.1:{vllm_port}"], data_dir=tmp_path / "prom"
    )
    events_port = free_port()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    operator = Proc(
        [
            str(BIN / "kubemeter"),
            "operator",
            "--kubeconfig",
            k.kubeconfig,
            "--prometheus-url",
            prom.url,
            "--db",
            db,
            "--interval",
            "1",
            "--lag",
            "3",
            "--events-listen",
            f"127.0.0.1:{events_port}",
            "--metrics-port",
            "0",
            "--standalone",
            "--log-level",
            "INFO",
        ],
        tmp_path / "operator.log",
        env,
    )
    try:
        prom.start()
        # a long-running inference server: Prometheus has its history before kubemeter
        # starts, so that history becomes the baseline and is never billed
        prom.wait_for("vllm:prompt_tokens_total", timeout=30)
        time.sleep(5)  # older than the operator's first window end (lag 3 s)
        operator.start()
        wait_until(
            "the operator to write tenant status",
            lambda: all(
                k.get_json("tenant", t["metadata"]["name"]).get("status", {}).get("period")
                for t in TENANTS
            ),
            timeout=60,
        )
        exporter.start()
        yield {
            "k": k,
            "prom": prom,
            "operator": operator,
            "exporter": exporter,
            "db": db,
            "events": f"http://127.0.0.1:{events_port}",
            "prompt": prompt,
            "generation": generation,
            "tmp": tmp_path,
        }
    finally:
        sys.stderr.write(f"\n--- operator log ---\n{operator.tail()}\n")
        operator.stop()
        exporter.stop()
        prom.close()
        vllm_server.shutdown()
        vllm_thread.join(5)


def token_events(batch: str, at: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{batch}-{i}",
            "kind": "tokens",
            "model": MODEL,
            "timestamp": at.isoformat(),
            "promptTokens": 1200 + i,
            "completionTokens": 300 + i,
            "cachedPromptTokens": 0,
        }
        for i in range(5)
    ]


def prometheus_truth(prom: PrometheusServer, metric: str) -> dict[str, int]:
    result = prom.query(f"sum by (namespace) (last_over_time({metric}[30m]))")
    return {r["metric"].get("namespace", ""): int(float(r["value"][1])) for r in result}


def test_operator_meters_rates_and_survives_crashes(world: dict[str, Any]) -> None:
    k, prom, operator = world["k"], world["prom"], world["operator"]
    events_url = world["events"] + "/v1/events"
    started = time.monotonic()
    now = datetime.now(UTC)
    period = Period.of(now)

    # tokens over HTTP; a token for globex cannot write acme's usage
    status, body = post(events_url, TOKENS["acme"], token_events("a", now))
    assert (status, body.get("accepted")) == (202, 5), body
    forged = [dict(e, id="forged", tenant="acme") for e in token_events("f", now)[:1]]
    assert post(events_url, TOKENS["globex"], forged)[0] == 403
    world["prompt"].labels(MODEL, "globex-ml", "infer-0").inc(4000)
    world["generation"].labels(MODEL, "globex-ml", "infer-0").inc(1000)

    time.sleep(4)
    operator.kill9()  # crash mid-run
    operator.start()
    time.sleep(3)
    prom.stop()  # Prometheus away for a few cycles
    time.sleep(5)
    prom.start()
    status, body = post(events_url, TOKENS["acme"], token_events("b", now))
    status_dup, body_dup = post(events_url, TOKENS["acme"], token_events("b", now))
    assert (status, status_dup, body_dup.get("duplicates")) == (202, 202, 5), (body, body_dup)
    world["prompt"].labels(MODEL, "globex-ml", "infer-0").inc(2500)
    time.sleep(2)
    operator.kill9()
    operator.start()

    # the scenario ends after HELD_MS of scenario time; wait for the counters to go flat
    remaining = HELD_MS / 1000 / SPEED - (time.monotonic() - started) + 3
    if remaining > 0:
        time.sleep(remaining)
    truth_alloc = prometheus_truth(prom, "kubemeter_gpu_allocated_milliseconds_total")
    truth_active = prometheus_truth(prom, "kubemeter_gpu_active_milliseconds_total")
    for ns, want in (("acme-prod", HELD_MS), ("globex-ml", HELD_MS), ("orphan", HELD_MS)):
        assert abs(truth_alloc[ns] - want) <= want * 0.001, (ns, truth_alloc)

    ledger = Ledger.open(world["db"])
    try:

        def gpu_ms(tenant: str) -> tuple[int, int]:
            totals = ledger.period_totals(tenant, period)
            return (
                sum(q.allocated_ms for key, q in totals.items() if key.kind == "gpu"),
                sum(q.active_ms for key, q in totals.items() if key.kind == "gpu"),
            )

        expected = {
            "acme": (truth_alloc["acme-prod"], truth_active["acme-prod"]),
            "globex": (truth_alloc["globex-ml"], truth_active["globex-ml"]),
            "_unassigned": (truth_alloc["orphan"], truth_active["orphan"]),
        }
        deadline = time.monotonic() + 60
        while {t: gpu_ms(t) for t in expected} != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert {t: gpu_ms(t) for t in expected} == expected
        acme_alloc, acme_active = gpu_ms("acme")
        assert abs(acme_alloc - HELD_MS) <= HELD_MS * 0.001
        assert abs(acme_active - HELD_MS * 0.8) <= HELD_MS * 0.8 * 0.001

        def globex_tokens() -> tuple[int, int]:
            totals = ledger.period_totals("globex", period).items()
            return (
                sum(q.prompt_tokens for key, q in totals if key.kind == "tokens"),
                sum(q.completion_tokens for key, q in totals if key.kind == "tokens"),
            )

        # increments after the operator first saw the counters; the history is a baseline
        wait_until(
            f"globex's Prometheus tokens (now {globex_tokens()})",
            lambda: globex_tokens() == (6500, 1000),
            timeout=30,
        )
    finally:
        ledger.close()

    # give the operator a cycle to write the final status, then compare money three ways
    usage = {
        "acme": [
            {
                "kind": "gpu",
                "model": H100,
                "allocatedMs": expected["acme"][0],
                "activeMs": expected["acme"][1],
                "windowStart": now.isoformat(),
                "windowEnd": datetime.now(UTC).isoformat(),
            },
            *token_events("a", now),
            *token_events("b", now),
        ],
        "globex": [
            {
                "kind": "gpu",
                "model": H100,
                "allocatedMs": expected["globex"][0],
                "activeMs": expected["globex"][1],
                "windowStart": now.isoformat(),
                "windowEnd": datetime.now(UTC).isoformat(),
            },
            {
                "kind": "tokens",
                "model": MODEL,
                "timestamp": now.isoformat(),
                "promptTokens": 6500,
                "completionTokens": 1000,
            },
        ],
    }
    tmp: Path = world["tmp"]
    for spec in TENANTS:
        name = spec["metadata"]["name"]
        plan = next(
            p for p in PLANS if p["metadata"]["name"] == spec["spec"]["pricePlanRef"]["name"]
        )
        (tmp / f"{name}-plan.yaml").write_text(yaml.safe_dump(plan))
        (tmp / f"{name}-tenant.yaml").write_text(yaml.safe_dump(spec))
        (tmp / f"{name}-usage.json").write_text(json.dumps(usage[name]))
        quote = kubemeter(
            "quote",
            "--plan",
            str(tmp / f"{name}-plan.yaml"),
            "--tenant",
            str(tmp / f"{name}-tenant.yaml"),
            "--usage",
            str(tmp / f"{name}-usage.json"),
            "--period",
            str(period),
        )
        assert quote.returncode == 0, quote.stderr
        quoted = Decimal(json.loads(quote.stdout)["total"])

        def settled(name: str = name, quoted: Decimal = quoted) -> dict[str, Any] | None:
            status = k.get_json("tenant", name).get("status", {})
            return status if status.get("total") and Decimal(status["total"]) == quoted else None

        status = wait_until(f"{name}'s status total to reach {quoted}", settled, timeout=30)
        invoice = kubemeter(
            "invoice", name, "--period", str(period), "--db", world["db"], "--format", "json"
        )
        assert invoice.returncode == 0, invoice.stderr
        invoiced = json.loads(invoice.stdout)["statement"]["total"]
        assert Decimal(invoiced) == quoted == Decimal(status["total"])
        if name == "globex":  # prepaid and never topped up: an empty wallet is a hard cap
            assert status["phase"] == "Suspended", status
            assert status["enforcement"]["trigger"] == "walletEmpty"
        else:
            assert status["phase"] in ("Active", "Warning")
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions.get("PricePlanFound") == "True"
        assert status["summary"]["spend"].startswith(status["total"])

    globex = k.get_json("tenant", "globex")["status"]
    assert "wallet" in globex, globex
    # acme's 10 % discount shows; globex is priced on active GPU time
    acme = k.get_json("tenant", "acme")["status"]
    assert Decimal(acme["discount"]) > 0

    unassigned = kubemeter("unassigned", "--period", str(period), "--db", world["db"])
    assert unassigned.returncode == 0, unassigned.stderr
    assert "orphan" in unassigned.stdout
    assert "stray-0" in unassigned.stdout

    # the Prometheus outage was announced on every Tenant, and so was its end
    events = k.get_json("events", "-n", "default", "--field-selector", "involvedObject.name=acme")
    reasons = {e["reason"] for e in events["items"]}
    assert {"MeteringDegraded", "MeteringRecovered"} <= reasons, reasons

    table = k.kubectl_ok("get", "tenants")
    assert "acme" in table
    assert "e2e-usd" in table
