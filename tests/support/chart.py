"""The Helm chart, rendered by the helm binary the control-plane build caches."""

from __future__ import annotations

import io
import os
import subprocess
import urllib.request
import zipfile
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import yaml

from support.cluster import KubeCluster, load_devcluster
from support.paths import REPO_ROOT

CHART = REPO_ROOT / "charts" / "kubemeter"


def helm(*args: str) -> str:
    """Run helm; fail the calling test with its stderr when it fails."""
    binary = str(load_devcluster().binary_path("helm"))
    res = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def render(release: str = "km", namespace: str = "kubemeter", *sets: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` values, as a list of objects."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one rendered object of this kind and name."""
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def helm_on(cluster: KubeCluster, *args: str, check: bool = True) -> CompletedProcess[str]:
    """helm against `cluster`; fails the test with stderr unless it exits 0 (`check`)."""
    binary = str(load_devcluster().binary_path("helm"))
    res = subprocess.run(
        [binary, "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if check:
        assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stderr}{res.stdout}"
    return res


PROMETHEUS_OPERATOR_CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


def prometheus_operator_crds() -> list[Path]:
    """The Prometheus Operator's published CRD YAML (example/prometheus-operator-crd/ of
    its repository), taken once from its module zip on the Go module proxy into the cache.
    Not generated: a chart object these real schemas refuse fails the test."""
    devcluster = load_devcluster()
    version = devcluster.read_versions()["PROMETHEUS_OPERATOR_VERSION"]
    module = "github.com/prometheus-operator/prometheus-operator"
    target = devcluster.cache_dir() / "crds" / f"prometheus-operator-{version}"
    files = [target / f"monitoring.coreos.com_{name}.yaml" for name in PROMETHEUS_OPERATOR_CRDS]
    if all(f.is_file() for f in files):
        return files
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]
    url = f"{proxy.rstrip('/')}/{module}/@v/{version}.zip"
    with urllib.request.urlopen(url, timeout=120) as resp:
        archive = zipfile.ZipFile(io.BytesIO(resp.read()))
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        member = f"{module}@{version}/example/prometheus-operator-crd/{f.name}"
        tmp = f.with_suffix(".tmp")
        tmp.write_bytes(archive.read(member))
        tmp.replace(f)
    return files
