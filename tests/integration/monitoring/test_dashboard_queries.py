"""The chart's Grafana dashboard and alerts are queries against a real Prometheus: Grafana is
not here, so its queries are the contract.

A real Prometheus scrapes the simulated exporter (three GPU pods, one of no Tenant), a
vLLM-style token counter (prompt, completion and cached tokens; one burst the operator must
quarantine) and a running `kubemeter operator` metering two Tenants against the local
kube-apiserver: one on a budget, one prepaid with an empty wallet (suspended). Every panel's
every query, with Grafana's variables made concrete, parses and returns at least one series;
the dashboard's variable queries too. Every alert expression is a query Prometheus accepts,
and `promtool check rules` accepts the rule file. The tenant gauges say what the Tenant
status says.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.chart import CHART
from support.cluster import KubeCluster
from support.operator_process import (
    Process,
    exporter_process,
    operator_process,
    text_exposition,
    wait_until,
)
from support.paths import REPO_ROOT
from support.prometheus import PrometheusServer, free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DASHBOARD = CHART / "files" / "dashboards" / "kubemeter.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
EXPORTER_JOB = "kubemeter-exporter"
ACME, GLOBEX = "mon-acme", "mon-globex"
PODS = (("mon-acme", "train-0"), ("mon-globex", "infer-0"), ("mon-orphan", "stray-0"))
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MAX_TOKEN_RATE = 1000  # tokens/s per series: the feed stays under it, the burst does not

VARIABLES = {
    "tenant": f"{ACME}|{GLOBEX}",
    "exporter_job": EXPORTER_JOB,
    "datasource": "prometheus",
    "__rate_interval": "30s",
    "__interval": "15s",
    "__range": "10m",
}

PLAN: dict[str, Any] = {
    "apiVersion": "kubemeter.dev/v1alpha1",
    "kind": "PricePlan",
    "metadata": {"name": "mon-eur"},
    "spec": {
        "currency": "EUR",
        "meters": [
            {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
             "pricing": {"model": "flat", "unitPrice": "360"}},
            {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
             "source": {"metric": "mon_prompt_tokens_total"},
             "pricing": {"model": "flat", "unitPrice": "0.20"}},
            {"name": "completion", "kind": "completionTokens", "unit": "1k-tokens",
             "source": {"metric": "mon_generation_tokens_total"},
             "pricing": {"model": "flat", "unitPrice": "0.60"}},
            {"name": "cached", "kind": "cachedPromptTokens", "unit": "1k-tokens",
             "source": {"metric": "mon_cached_prompt_tokens_total"},
             "pricing": {"model": "flat", "unitPrice": "0.05"}},
        ],
    },
}  # fmt: skip


def tenant(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"pricePlanRef": {"name": "mon-eur"}, "namespaces": [name], **spec},
    }


TENANTS = [
    tenant(ACME, budget={"limit": "100", "alertThresholds": [50, 80, 100]}),
    tenant(GLOBEX, wallet={"enabled": True}),  # never topped up: suspended
]


# -- the queries ------------------------------------------------------------------------


def concrete(expr: str) -> str:
    """`expr` with Grafana's variables ($name, ${name}, [[name]]) replaced."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in VARIABLES, f"unknown dashboard variable {name!r} in {expr}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, rows' nested panels included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels") or [])
            for t in p.get("targets") or []:
                if not t.get("hide"):
                    out.append((f"panel {p['title']!r} {t['refId']}", concrete(t["expr"])))

    walk(dashboard["panels"])
    return out


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """The query variables' `label_values(metric, label)` as the PromQL Grafana runs."""
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        assert m, f"variable {v['name']}: only label_values(metric, label) is tested: {q}"
        out.append((f"variable {v['name']!r}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"])
            for g in rules["groups"] for r in g["rules"]]  # fmt: skip


def query(prom: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """Instant query; a query Prometheus refuses fails the test with its error."""
    try:
        return prom.query(expr)
    except urllib.error.HTTPError as exc:
        pytest.fail(f"Prometheus refused {expr!r}: {exc.read().decode(errors='replace')}")


# -- the world --------------------------------------------------------------------------


class TokenFeed:
    """vLLM-style counters for the three namespaces, growing until `stop`."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        labels = ["model_name", "namespace", "pod"]
        reg = self.registry
        self.counters = {
            kind: prometheus_client.Counter(f"mon_{kind}_tokens", "", labels, registry=reg)
            for kind in ("prompt", "generation", "cached_prompt")
        }
        for ns, pod in PODS:
            for c in self.counters.values():
                c.labels(MODEL, ns, pod)
        self.burst = self.counters["prompt"].labels("burst", ACME, "train-0")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for ns, pod in PODS:
                self.counters["prompt"].labels(MODEL, ns, pod).inc(100)
                self.counters["cached_prompt"].labels(MODEL, ns, pod).inc(40)
                self.counters["generation"].labels(MODEL, ns, pod).inc(50)

    def start(self) -> TokenFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def monitored(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    k = kube_cluster
    tmp = tmp_path_factory.mktemp("monitoring")
    k.kubectl_ok("apply", "-f", str(REPO_ROOT / "crds"))
    k.kubectl_ok("wait", "--for=condition=Established", "crd/tenants.kubemeter.dev",
                 "crd/priceplans.kubemeter.dev", "--timeout=60s")  # fmt: skip
    for ns, _ in PODS:
        k.kubectl("create", "namespace", ns)
    for obj in (PLAN, *TENANTS):
        k.apply(obj)
    for ns, pod in PODS:
        k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns},
                 "spec": {"nodeName": "gpu-node-0", "containers": [{
                     "name": "main", "image": "registry.example/gpu:1",
                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})  # fmt: skip
    feed = TokenFeed()
    procs: list[Process] = []
    with text_exposition(feed.registry) as token_port:
        exporter_port, metrics_port = free_port(), free_port()
        targets = {EXPORTER_JOB: f"127.0.0.1:{exporter_port}",
                   "kubemeter-operator": f"127.0.0.1:{metrics_port}",
                   "llm": f"127.0.0.1:{token_port}"}  # fmt: skip
        prom = PrometheusServer(
            list(targets.values()),
            data_dir=tmp / "prom",
            scrape_configs=[
                {"job_name": job, "static_configs": [{"targets": [target]}],
                 **({"honor_labels": True} if job == EXPORTER_JOB else {})}
                for job, target in targets.items()
            ],
        )  # fmt: skip
        exporter = exporter_process(HERE / "scenario.yaml", exporter_port, log=tmp / "exp.log")
        operator = operator_process(
            k, prom.url, f"sqlite:///{tmp / 'ledger.db'}", log=tmp / "operator.log",
            metrics_port=metrics_port,
            extra=("--standalone", "--max-token-rate", str(MAX_TOKEN_RATE)),
        )  # fmt: skip
        try:
            prom.start()
            procs += [exporter.start(), operator.start()]
            feed.start()
            prom.wait_for_targets(timeout=60)

            def metered_tokens() -> bool:
                # other tests' Tenants may be in the cluster too (their counters stay 0)
                rs = prom.query('kubemeter_tenant_tokens_total{kind="prompt"}')
                ours = {r["metric"]["tenant"]: float(r["value"][1]) for r in rs
                        if r["metric"]["tenant"] in (ACME, GLOBEX)}  # fmt: skip
                return len(ours) == 2 and all(v > 0 for v in ours.values())

            wait_until("the operator to meter both tenants' tokens", metered_tokens, timeout=90)
            feed.burst.inc(10_000_000)  # over the rate bound: quarantined, not billed
            yield {"k": k, "prom": prom, "operator": operator, "metrics_port": metrics_port}
        finally:
            feed.stop()
            for p in reversed(procs):
                p.stop()
            print(f"\n--- operator log ---\n{operator.tail()}")
            prom.close()
            for obj in TENANTS:
                k.kubectl("delete", "tenant", obj["metadata"]["name"], "--ignore-not-found")
            k.kubectl("delete", "priceplan", "mon-eur", "--ignore-not-found")
            for ns, _ in PODS:
                k.kubectl("delete", "namespace", ns, "--wait=false")


# -- the tests --------------------------------------------------------------------------


def test_every_dashboard_query_returns_series(monitored: dict[str, Any]) -> None:
    prom: PrometheusServer = monitored["prom"]
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard) + variable_queries(dashboard)
    assert len(queries) >= 25, queries

    def empty() -> list[str]:
        return [f"{where}: {expr}" for where, expr in queries if not query(prom, expr)]

    deadline = time.monotonic() + 120
    missing = empty()
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = empty()
    assert not missing, "queries without series:\n" + "\n".join(missing)

    # the figures behind them are the ones the world produced
    def value(expr: str) -> float:
        (r,) = query(prom, expr)
        return float(r["value"][1])

    assert value(f'kubemeter_tenant_phase{{tenant="{GLOBEX}", phase="Suspended"}}') == 1
    assert value(f'kubemeter_enforcement_actions_total{{tenant="{GLOBEX}", action="suspend"}}') >= 1
    assert value(f'kubemeter_tenant_tokens_total{{tenant="{ACME}", kind="cached_prompt"}}') > 0
    assert value(f'kubemeter_tenant_gpu_active_milliseconds_total{{tenant="{ACME}"}}') > 0
    assert value('sum(kubemeter_metering_quarantined_total{source="tokens"})') >= 1
    assert value("sum(kubemeter_unassigned_gpu_allocated_milliseconds_total)") > 0
    prompt = value(f'kubemeter_tenant_tokens_total{{tenant="{ACME}", kind="prompt"}}')
    assert prompt < 10_000_000  # the burst was held back


def test_every_alert_expression_is_a_query_prometheus_accepts(
    monitored: dict[str, Any],
) -> None:
    prom: PrometheusServer = monitored["prom"]
    expressions = rule_expressions()
    assert len(expressions) >= 10
    for _, expr in expressions:
        query(prom, expr)  # refused: fails with Prometheus' error
    # the budget alert is live for nobody, the suspension alert for the empty wallet
    firing = {r["metric"]["tenant"] for r in query(prom, dict(expressions)[
        "rule KubemeterTenantSuspended"])}  # fmt: skip
    assert firing & {ACME, GLOBEX} == {GLOBEX}  # (other tests' Tenants may be listed too)
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is part of make setup"
    res = subprocess.run([promtool, "check", "rules", str(RULES)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_tenant_gauges_say_what_the_tenant_status_says(monitored: dict[str, Any]) -> None:
    k: KubeCluster = monitored["k"]
    port = monitored["metrics_port"]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    for name in (ACME, GLOBEX):
        status = k.get_json("tenant", name)["status"]
        found = scrape()
        phase = {dict(lb)["phase"]: v for (n, lb), v in found.items()
                 if n == "kubemeter_tenant_phase" and dict(lb)["tenant"] == name}  # fmt: skip
        assert phase == {p: float(p == status["phase"]) for p in phase}, (name, phase)
        assert set(phase) == {"Active", "Warning", "Suspended"}
        workloads = found[("kubemeter_tenant_suspended_workloads", (("tenant", name),))]
        assert workloads == len(status.get("suspendedWorkloads") or [])
        end = found[("kubemeter_tenant_period_end_timestamp_seconds", (("tenant", name),))]
        assert end == datetime.fromisoformat(status["periodEnd"]).timestamp()
    wallet = k.get_json("tenant", GLOBEX)["status"]["wallet"]
    assert scrape()[("kubemeter_tenant_wallet_low", (("tenant", GLOBEX),))] == float(wallet["low"])
