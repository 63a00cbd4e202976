"""`kubectl kubemeter top` and `why` against a real kube-apiserver: two Tenants whose status
the API server stored (a Suspended one, with its thresholds, enforcement and suspended
workloads, and a Warning one), read through the installed `kubectl-kubemeter` entry point
with the kubeconfig from KUBECONFIG or --kubeconfig/--context, and through the real kubectl
finding the plugin on PATH."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import KubeCluster
from support.paths import CRDS_DIR

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PLUGIN = BIN / "kubectl-kubemeter"
_RUN = secrets.token_hex(3)
ACME = f"cli-acme-{_RUN}"
GLOBEX = f"cli-globex-{_RUN}"
PERIOD = {"period": "2026-11", "periodStart": "2026-11-01T00:00:00Z",
          "periodEnd": "2026-12-01T00:00:00Z", "currency": "USD"}  # fmt: skip
ACME_STATUS = {
    **PERIOD, "total": "5012.40", "subtotal": "5569.33", "discount": "556.93",
    "phase": "Suspended", "lastMeteredTime": "2026-11-20T12:00:00Z",
    "meters": [
        {"name": "h100-hours", "kind": "gpuTime", "unit": "gpu-hour", "quantity": "5400000000",
         "billedQuantity": "1500", "included": "0", "billable": "1500", "charge": "4500"},
        {"name": "llama-prompt", "kind": "promptTokens", "unit": "1m-tokens",
         "quantity": "39600000", "billedQuantity": "39.6", "included": "0",
         "billable": "39.6", "charge": "118.8"},
    ],
    "budget": {"limit": "5000", "used": "5012.40", "usedPercent": "100.25",
               "remaining": "-12.40", "thresholdsCrossed": [50, 80, 100]},
    "forecast": {"projectedTotal": "5012.40", "budgetExhaustedAt": "2026-11-20T10:00:00Z"},
    "enforcement": {"state": "Suspended", "trigger": "budgetExceeded",
                    "reason": "period total 5012.40 USD reached the budget limit 5000 USD",
                    "period": "2026-11", "startedAt": "2026-11-20T10:00:00Z",
                    "stoppedAt": "2026-11-20T10:00:35Z", "limit": "5000", "overshoot": "12.40"},
    "suspendedWorkloads": [
        {"kind": "Deployment", "namespace": f"{ACME}-prod", "name": "vllm-llama-70b",
         "replicas": 4, "state": "Stopped", "suspendedAt": "2026-11-20T10:00:02Z",
         "autoscaler": "HorizontalPodAutoscaler vllm-llama-70b: minReplicas 2 -> kept at 0"},
        {"kind": "Job", "namespace": f"{ACME}-prod", "name": "finetune-nightly",
         "suspend": False, "state": "Stopped", "suspendedAt": "2026-11-20T10:00:02Z"},
    ],
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Metered", "message": "usage is metered",
         "lastTransitionTime": "2026-11-01T00:00:10Z"},
        {"type": "EnforcementBlocked", "status": "False", "reason": "Enforcing", "message": "",
         "lastTransitionTime": "2026-11-20T10:00:00Z"},
    ],
    "summary": {"gpuHours": "1500", "tokens": 39600000, "spend": "5012.40 USD",
                "budgetUsed": "100.25%"},
}  # fmt: skip
GLOBEX_STATUS = {
    **PERIOD, "total": "912.30", "phase": "Warning", "lastMeteredTime": "2026-11-16T00:00:00Z",
    "budget": {"limit": "1000", "used": "912.30", "usedPercent": "91.23", "remaining": "87.70",
               "thresholdsCrossed": [50, 90]},
    "forecast": {"projectedTotal": "1812.30", "budgetExhaustedAt": "2026-11-17T11:04:00Z"},
}  # fmt: skip


def tenant(name: str, budget: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubemeter.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name.title(), "pricePlanRef": {"name": "gpu-standard"},
                     "namespaces": [f"{name}-prod"], "budget": budget}}  # fmt: skip


@pytest.fixture(scope="module")
def tenants(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    assert PLUGIN.exists(), "pip install -e . installs the kubectl-kubemeter entry point"
    kube_cluster.kubectl_ok("apply", "-f", str(CRDS_DIR))
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())["metadata"]["name"]
        kube_cluster.kubectl_ok("wait", "--for=condition=Established", f"crd/{crd}",
                                "--timeout=60s")  # fmt: skip
    budgets = {
        ACME: ({"limit": "5000", "alertThresholds": [50, 80, 100], "enforcement": "scaleDown"},
               ACME_STATUS),
        GLOBEX: ({"limit": "1000", "alertThresholds": [50, 90]}, GLOBEX_STATUS),
    }  # fmt: skip
    for name, (budget, status) in budgets.items():
        kube_cluster.apply(tenant(name, budget))
        kube_cluster.kubectl_ok("patch", "tenant", name, "--subresource=status", "--type=merge",
                                "-p", json.dumps({"status": status}))  # fmt: skip
        assert kube_cluster.get_json("tenant", name)["status"]["phase"] == status["phase"]
    yield kube_cluster
    kube_cluster.kubectl("delete", "tenant", ACME, GLOBEX, "--ignore-not-found")


def plugin(cluster: KubeCluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PLUGIN), *args], env={**cluster.env(), **env}, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return res.stdout


def mine(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of this module's tenants (other tests may have left theirs)."""
    return {r["tenant"]: r for r in doc["tenants"] if r["tenant"] in (ACME, GLOBEX)}


def test_top_json_has_exact_figures_from_status(tenants: KubeCluster) -> None:
    doc = json.loads(ok(plugin(tenants, "top", "-o", "json")))
    rows = mine(doc)
    assert rows[ACME] == {
        "tenant": ACME, "phase": "Suspended", "period": "2026-11", "currency": "USD",
        "spend": "5012.40", "budget": "5000", "budgetUsedPercent": "100.25",
        "burnPerHour": "0.0000", "projectedTotal": "5012.40", "gpuMs": "5400000000",
        "tokens": 39600000, "suspendedWorkloads": 2,
    }  # fmt: skip
    assert rows[GLOBEX]["burnPerHour"] == "2.5000"  # 900 USD over the 360 h left
    names = [r["tenant"] for r in doc["tenants"]]
    assert names.index(ACME) < names.index(GLOBEX)  # the bigger spender first


def test_top_table_has_human_figures_and_fits_the_terminal(tenants: KubeCluster) -> None:
    text = ok(plugin(tenants, "top", COLUMNS="120"))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["TENANT", "PHASE", "SPEND"]
    assert max(len(line) for line in lines) <= 120
    acme = next(line for line in lines if line.startswith(ACME[:8]) and "Suspended" in line)
    for figure in ("5,012.40 USD", "5,000.00", "100.25%", "1,500", "39.6M"):
        assert figure in acme, acme
    globex = next(line for line in lines if "Warning" in line and "912.30 USD" in line)
    assert "91.23%" in globex
    assert "2.50" in globex.split()


def test_why_says_what_fired_what_is_stopped_and_what_lifts_it(tenants: KubeCluster) -> None:
    text = ok(plugin(tenants, "why", ACME, COLUMNS="100"))
    assert f"Tenant:     {ACME} ({ACME.title()})" in text
    assert "Phase:      Suspended" in text
    assert "Suspended since 2026-11-20T10:00:00Z (budgetExceeded)" in text
    assert "alert thresholds fired this period: 50%, 80%, 100%" in text
    assert "vllm-llama-70b" in text
    assert "finetune-nightly" in text
    assert "replicas=4" in text
    assert "raise spec.budget.limit above the spend, 5,012.40 USD" in text
    assert "the next period, from 2026-12-01T00:00:00Z" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_why_yaml_is_exact_and_complete(tenants: KubeCluster) -> None:
    doc = yaml.safe_load(ok(plugin(tenants, "why", ACME, "-o", "yaml")))
    assert doc["phase"] == "Suspended"
    assert doc["spend"] == "5012.40"
    assert doc["budget"]["thresholdsCrossed"] == [50, 80, 100]
    assert doc["budget"]["limit"] == "5000"
    assert doc["enforcement"]["trigger"] == "budgetExceeded"
    assert doc["enforcement"]["overshoot"] == "12.40"
    assert [w["name"] for w in doc["suspendedWorkloads"]] == ["vllm-llama-70b",
                                                              "finetune-nightly"]  # fmt: skip
    assert doc["lifts"][0] == "raise spec.budget.limit above the spend, 5,012.40 USD"
    warning = yaml.safe_load(ok(plugin(tenants, "why", GLOBEX, "-o", "yaml")))
    assert "91.23% of the budget used: Warning from 90%" in warning["reasons"]


def test_kubeconfig_and_context_flags_pick_the_cluster(tenants: KubeCluster) -> None:
    context = tenants.kubectl_ok("config", "current-context").strip()
    env = {k: v for k, v in tenants.env().items() if k != "KUBECONFIG"}
    env["HOME"] = str(Path(tenants.kubeconfig).parent / "no-home")  # no ~/.kube/config
    argv = [str(PLUGIN), "why", GLOBEX, "-o", "json", "--kubeconfig", tenants.kubeconfig]
    res = subprocess.run([*argv, "--context", context], env=env, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert json.loads(ok(res))["phase"] == "Warning"
    bad = subprocess.run([*argv, "--context", "nowhere"], env=env, capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 2
    assert "kubectl kubemeter why: error: cannot load the kubeconfig" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_unknown_tenant_is_an_error_naming_it(tenants: KubeCluster) -> None:
    res = plugin(tenants, "why", f"nobody-{_RUN}")
    assert res.returncode == 2
    assert f"no Tenant named 'nobody-{_RUN}'" in res.stderr


def test_kubectl_finds_the_plugin_on_path(tenants: KubeCluster) -> None:
    env = {**tenants.env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    listed = subprocess.run([tenants.kubectl_path, "plugin", "list"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert str(PLUGIN) in listed.stdout
    res = subprocess.run([tenants.kubectl_path, "kubemeter", "top", "-o", "json"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert mine(json.loads(res.stdout))[ACME]["phase"] == "Suspended"
    usage = subprocess.run([tenants.kubectl_path, "kubemeter", "--help"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert usage.stdout.startswith("usage: kubectl kubemeter ")
