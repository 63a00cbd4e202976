"""Monitoring in the chart, rendered with helm: off by default; with monitoring values on, a
ServiceMonitor over a metrics Service of the operator pods (no honorLabels), a
PrometheusRule that is the rule file (the exporter's job following exporter.scrapeJob, extra
labels, alerts left out on request) and the Grafana dashboard ConfigMap, byte for byte the
file, with the sidecar's label. The plain scrape config's operator job is one promtool
accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import CHART, one, render

pytestmark = pytest.mark.integration

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "kubemeter.json"
SNIPPET = CHART / "files" / "prometheus-scrape-config.yaml"
ON = ("monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
      "monitoring.dashboard.enabled=true")  # fmt: skip
KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_monitoring_is_off_by_default() -> None:
    docs = render()
    assert [d for d in docs if d["kind"] in KINDS] == []
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"
            and "grafana_dashboard" in (d["metadata"].get("labels") or {})] == []  # fmt: skip
    assert "km-operator-metrics" not in {d["metadata"]["name"] for d in docs}


def test_service_monitor_scrapes_every_operator_replica_without_honoring_labels() -> None:
    docs = render("km", "metering", *ON, "monitoring.serviceMonitor.labels.release=prom",
                  "monitoring.serviceMonitor.interval=15s")  # fmt: skip
    sm = one(docs, "ServiceMonitor", "km-operator")
    svc = one(docs, "Service", "km-operator-metrics")
    pod = one(docs, "Deployment", "km-operator")["spec"]["template"]
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"] == "metering"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["metering"]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # only this Service: the events API's Service does not carry the selected labels
    events = one(docs, "Service", "km-events")
    assert not sm["spec"]["selector"]["matchLabels"].items() <= events["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["clusterIP"] == "None"  # every replica is a target
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False  # the exporter's job is the only one with them
    assert endpoint["interval"] == "15s"
    (port,) = svc["spec"]["ports"]
    assert endpoint["port"] == port["name"]
    (container,) = pod["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    # the job is named like the plain scrape config's operator job
    jobs = {j["job_name"] for j in yaml.safe_load(SNIPPET.read_text())}
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] in jobs


def test_prometheus_rule_is_the_rule_file() -> None:
    docs = render("km", "kubemeter", *ON, "monitoring.prometheusRule.labels.release=prom")
    rule = one(docs, "PrometheusRule", "km")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "km"
    want = yaml.safe_load(RULES.read_text())["groups"]
    for group in want:  # the template writes labels: {} where a rule has none
        for r in group["rules"]:
            r.setdefault("labels", {})
    assert rule["spec"]["groups"] == want


def test_prometheus_rule_follows_the_exporter_job_and_takes_labels_and_omissions() -> None:
    docs = render("km", "kubemeter", *ON, "exporter.scrapeJob=gpu-meter",
                  "monitoring.prometheusRule.ruleLabels.team=platform",
                  "monitoring.prometheusRule.ruleLabels.severity=page",
                  "monitoring.prometheusRule.disabled={KubemeterExporterAbsent}")  # fmt: skip
    groups = one(docs, "PrometheusRule", "km")["spec"]["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert "KubemeterExporterAbsent" not in rules
    assert (
        len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"]) - 1
    )
    assert rules["KubemeterExporterDown"]["expr"].strip() == 'up{job="gpu-meter"} == 0'
    assert all('"kubemeter-exporter"' not in r["expr"] for r in rules.values())
    assert all(r["labels"]["team"] == "platform" for r in rules.values())
    # an alert's own severity wins over the extra labels
    assert rules["KubemeterTenantBudgetExceeded"]["labels"]["severity"] == "critical"


def test_dashboard_config_map_is_the_file_with_the_sidecar_label() -> None:
    docs = render("km", "kubemeter", *ON)
    cm = one(docs, "ConfigMap", "km-dashboard")
    assert cm["metadata"]["namespace"] == "kubemeter"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"kubemeter.json": DASHBOARD.read_text()}
    assert json.loads(cm["data"]["kubemeter.json"])["uid"] == "kubemeter"

    docs = render("km", "kubemeter", *ON, "monitoring.dashboard.namespace=grafana",
                  "monitoring.dashboard.labels.grafana_dashboard=kubemeter",
                  "monitoring.dashboard.annotations.grafana_folder=Billing")  # fmt: skip
    cm = one(docs, "ConfigMap", "km-dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "kubemeter"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Billing"}


def _job(name: str) -> dict[str, Any]:
    (job,) = [j for j in yaml.safe_load(SNIPPET.read_text()) if j["job_name"] == name]
    return dict(job)


def test_plain_scrape_config_has_an_operator_job_that_prometheus_accepts(
    tmp_path: Path,
) -> None:
    job = _job("kubemeter-operator")
    assert not job.get("honor_labels")
    keeps = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"]
             if r.get("action") == "keep"}  # fmt: skip
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)] == "operator"
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    honoring = [j["job_name"] for j in yaml.safe_load(SNIPPET.read_text()) if j.get("honor_labels")]
    assert honoring == ["kubemeter-exporter"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is part of make setup"
    # Debian builds Prometheus without kubernetes_sd: a static target in its place
    checked = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    checked["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [checked], "rule_files": [str(RULES)]}))
    res = subprocess.run([promtool, "check", "config", str(config)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
