"""How Prometheus scrapes the exporter, as the chart ships it: one job whose labels are
honoured, named what the operator trusts. Rendered with helm; the plain scrape config is
checked by Prometheus' own promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import CHART, one, render

pytestmark = pytest.mark.integration

SNIPPET = CHART / "files" / "prometheus-scrape-config.yaml"


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    dep = one(docs, "Deployment", "km-operator")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c["env"]}


def _selects(selector: str, labels: dict[str, str]) -> bool:
    pairs = [term.split("=", 1) for term in selector.split(",")]
    return all(labels.get(k) == v for k, v in pairs)


def test_default_exporter_pods_carry_the_trusted_job_and_no_scrape_annotations() -> None:
    docs = render()
    pod = one(docs, "DaemonSet", "km-exporter")["spec"]["template"]
    env = _env(docs)
    assert pod["metadata"]["labels"]["kubemeter.dev/scrape-job"] == "kubemeter-exporter"
    assert env["KUBEMETER_EXPORTER_JOB"] == "kubemeter-exporter"
    # the operator's exporter directory finds exactly these pods
    assert _selects(env["KUBEMETER_EXPORTER_SELECTOR"], pod["metadata"]["labels"])
    operator_labels = one(docs, "Deployment", "km-operator")["spec"]["template"]["metadata"]
    assert not _selects(env["KUBEMETER_EXPORTER_SELECTOR"], operator_labels["labels"])
    # a kubernetes-pods job would scrape it again under another job name
    assert "prometheus.io/scrape" not in (pod["metadata"].get("annotations") or {})
    assert [d for d in docs if d["kind"] == "PodMonitor"] == []


def test_pod_monitor_honours_labels_under_the_job_the_operator_trusts() -> None:
    sets = ("exporter.podMonitor.enabled=true", "exporter.scrapeJob=gpu-meter",
            "exporter.podMonitor.labels.release=prom")  # fmt: skip
    docs = render("km", "metering", *sets)
    pm = one(docs, "PodMonitor", "km-exporter")
    ds = one(docs, "DaemonSet", "km-exporter")
    pod = ds["spec"]["template"]
    spec = pm["spec"]
    assert pm["metadata"]["namespace"] == "metering"
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert spec["namespaceSelector"] == {"matchNames": ["metering"]}
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # the job label comes from the pod label, which says what the operator trusts
    assert pod["metadata"]["labels"][spec["jobLabel"]] == "gpu-meter"
    assert _env(docs)["KUBEMETER_EXPORTER_JOB"] == "gpu-meter"
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
    (container,) = pod["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}


def test_plain_scrape_config_is_one_honouring_job_that_prometheus_accepts(
    tmp_path: Path,
) -> None:
    jobs = yaml.safe_load(SNIPPET.read_text())
    (job,) = [j for j in jobs if j.get("honor_labels")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert job["job_name"] == values["exporter"]["scrapeJob"]
    assert job["honor_labels"] is True
    keeps = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)] == "exporter"
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is part of make setup"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    # Debian builds Prometheus without kubernetes_sd: promtool checks the rest of the job
    # (honor_labels, relabel actions and regexes) with a static target in its place.
    checked = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    checked["static_configs"] = [{"targets": ["127.0.0.1:9400"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [checked]}))
    res = subprocess.run([promtool, "check", "config", str(config)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
