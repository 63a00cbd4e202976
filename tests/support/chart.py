"""The Helm chart, rendered by the helm binary the control-plane build caches."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from support.cluster import load_devcluster
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
