"""Fast start: a command imports only what it uses. `kubemeter --help` loads no command;
`kubemeter quote` loads the pricing core, never the operator's machinery (kopf, the
kubernetes client, SQLAlchemy, aiohttp, Prometheus); `top --help` and `why --help` do not
load the kubernetes client. Checked in a fresh interpreter, on the modules it ends with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import EXAMPLES_DIR

MACHINERY = ("kopf", "kubernetes", "sqlalchemy", "aiohttp", "prometheus_api_client", "psycopg",
             "kubemeter_operator.ledger", "kubemeter_operator.controller")  # fmt: skip
"""What no offline command may import."""

PROBE = """
import json, sys
from kubemeter_operator.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def modules_after(tmp_path: Path, *argv: str) -> set[str]:
    report = tmp_path / "modules.json"
    res = subprocess.run([sys.executable, "-c", PROBE, str(report), *argv], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(report.read_text())
    assert doc["code"] == 0, res.stderr
    return set(doc["modules"])


def loaded(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_help_loads_no_command_and_no_third_party_module(tmp_path: Path) -> None:
    modules = modules_after(tmp_path, "--help")
    assert loaded(modules, "kubemeter_operator.commands") == []
    assert loaded(modules, *MACHINERY, "pydantic", "yaml") == []


def test_quote_loads_the_pricing_core_and_nothing_of_the_operator(tmp_path: Path) -> None:
    modules = modules_after(
        tmp_path, "quote", "--plan", str(EXAMPLES_DIR / "priceplan-gpu-standard.yaml"),
        "--usage", str(EXAMPLES_DIR / "usage.json"),
        "--tenant", str(EXAMPLES_DIR / "tenant-acme.yaml"), "-o", "table",
    )  # fmt: skip
    assert "kubemeter_operator.rating" in modules  # it did price
    assert loaded(modules, *MACHINERY) == []
    others = {f"kubemeter_operator.commands.{name}" for name in ("invoice", "ledger", "top")}
    assert not others & modules


@pytest.mark.parametrize("command", ["top", "why"])
def test_cluster_command_help_loads_no_kubernetes_client(tmp_path: Path, command: str) -> None:
    modules = modules_after(tmp_path, command, "--help")
    assert f"kubemeter_operator.commands.{command}" in modules
    assert loaded(modules, *MACHINERY, "pydantic", "kubemeter_operator.kube") == []
