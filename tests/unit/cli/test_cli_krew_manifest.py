"""The krew manifest describes the plugin pyproject.toml installs: its name is how kubectl
calls it, its bin the console script, its version the package's."""

from __future__ import annotations

import tomllib
from typing import Any

import yaml

from support.paths import REPO_ROOT

MANIFEST = REPO_ROOT / "plugins" / "krew" / "kubemeter.yaml"


def manifest() -> Any:
    return yaml.safe_load(MANIFEST.read_text())


def project() -> Any:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_the_manifest_is_a_krew_plugin_named_for_its_file() -> None:
    doc = manifest()
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin"
    assert doc["metadata"]["name"] == MANIFEST.stem == "kubemeter"
    assert doc["spec"]["version"] == f"v{project()['version']}"
    assert len(doc["spec"]["shortDescription"]) <= 64


def test_every_platform_runs_the_console_script_pyproject_installs() -> None:
    scripts = project()["scripts"]
    assert scripts["kubectl-kubemeter"] == "kubemeter_operator.cli:plugin_main"
    platforms = manifest()["spec"]["platforms"]
    assert {(p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
            for p in platforms} == {("linux", "amd64"), ("linux", "arm64"),
                                    ("darwin", "amd64"), ("darwin", "arm64")}  # fmt: skip
    version = manifest()["spec"]["version"]
    for p in platforms:
        assert p["bin"] == "kubectl-kubemeter"
        assert {"from": "kubectl-kubemeter", "to": "."} in p["files"]
        assert version in p["uri"]
