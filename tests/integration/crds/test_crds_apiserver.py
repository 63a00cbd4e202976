"""The generated CRDs against a real kube-apiserver: they install, accept the examples,
reject invalid objects with a message naming the field, and serve status and printer
columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import KubeCluster
from support.invalid_objects import INVALID_CASES, InvalidCase, valid_priceplan, valid_tenant
from support.paths import CRDS_DIR, EXAMPLES_DIR

pytestmark = pytest.mark.integration

EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("priceplan-*.yaml")) + sorted(
    EXAMPLES_DIR.glob("tenant-*.yaml")
)


@pytest.fixture(scope="module")
def crds(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl_ok("apply", "-f", str(CRDS_DIR))
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        kube_cluster.kubectl_ok(
            "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"
        )
    return kube_cluster


def test_crds_are_established_with_status_subresource(crds: KubeCluster) -> None:
    for name in ("priceplans.kubemeter.dev", "tenants.kubemeter.dev"):
        crd = crds.get_json("crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True"
        assert conditions.get("NamesAccepted") == "True"
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["scope"] == "Cluster"


def test_examples_exist() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLE_FILES}
    assert {"PricePlan", "Tenant"} <= kinds


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_are_accepted(crds: KubeCluster, path: Path) -> None:
    crds.kubectl_ok("apply", "-f", str(path))
    obj = yaml.safe_load(path.read_text())
    kind = "priceplan" if obj["kind"] == "PricePlan" else "tenant"
    stored = crds.get_json(kind, obj["metadata"]["name"])
    scalars = {k: v for k, v in obj["spec"].items() if not isinstance(v, dict | list)}
    assert scalars, "an example should set some scalar fields"
    assert {k: stored["spec"][k] for k in scalars} == scalars


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_objects_are_rejected_naming_the_field(
    crds: KubeCluster, case: InvalidCase
) -> None:
    name = f"invalid-{case.id}"
    res = crds.kubectl("create", "-f", "-", input=json.dumps(case.build(name)))
    assert res.returncode != 0, f"{case.id} was accepted by the API server"
    assert case.field in res.stderr, res.stderr
    kind = "priceplan" if case.kind == "PricePlan" else "tenant"
    assert crds.kubectl("get", kind, name).returncode != 0, "nothing may be stored"


def _status(total: str) -> dict[str, Any]:
    return {
        "status": {
            "period": "2026-11",
            "currency": "USD",
            "total": total,
            "phase": "Warning",
            "summary": {
                "gpuHours": "12.5",
                "tokens": 1234567,
                "spend": f"{total} USD",
                "budgetUsed": "84%",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Metered",
                    "message": "ok",
                    "lastTransitionTime": "2026-11-30T12:00:00Z",
                }
            ],
        }
    }


def test_status_subresource_and_printer_columns(crds: KubeCluster) -> None:
    crds.apply(valid_priceplan("columns-plan"))
    tenant = valid_tenant("columns-tenant")
    tenant["spec"]["pricePlanRef"]["name"] = "columns-plan"
    crds.apply(tenant)

    patch = json.dumps(_status("842.17"))
    crds.kubectl_ok(
        "patch", "tenant", "columns-tenant", "--subresource=status", "--type=merge", "-p", patch
    )
    stored = crds.get_json("tenant", "columns-tenant")
    assert stored["status"]["total"] == "842.17"
    assert stored["status"]["summary"]["tokens"] == 1234567

    # a status write cannot change spec, and a spec write cannot change status
    crds.kubectl_ok(
        "patch", "tenant", "columns-tenant", "--subresource=status", "--type=merge",
        "-p", json.dumps({"spec": {"discountPercent": "99"}}),
    )  # fmt: skip
    assert crds.get_json("tenant", "columns-tenant")["spec"]["discountPercent"] == "5"
    crds.kubectl_ok(
        "patch", "tenant", "columns-tenant", "--type=merge",
        "-p", json.dumps({"status": {"total": "0"}}),
    )  # fmt: skip
    assert crds.get_json("tenant", "columns-tenant")["status"]["total"] == "842.17"

    # the status schema is enforced too
    bad = crds.kubectl(
        "patch", "tenant", "columns-tenant", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Exploded"}}),
    )  # fmt: skip
    assert bad.returncode != 0
    assert "status.phase" in bad.stderr

    table = crds.kubectl_ok("get", "tenants", "columns-tenant")
    header, row = table.strip().splitlines()
    assert header.split() == ["NAME", "PLAN", "GPU-HOURS", "TOKENS", "SPEND", "BUDGET", "PHASE",
                              "AGE"]  # fmt: skip
    assert row.split()[:8] == ["columns-tenant", "columns-plan", "12.5", "1234567", "842.17",
                               "USD", "84%", "Warning"]  # fmt: skip

    plans = crds.kubectl_ok("get", "priceplans", "columns-plan")
    assert plans.splitlines()[0].split()[:4] == ["NAME", "CURRENCY", "PLATFORM-FEE", "METERS"]
    assert plans.splitlines()[1].split()[:3] == ["columns-plan", "USD", "100.00"]

    wide = crds.kubectl_ok("get", "tenants", "columns-tenant", "-o", "wide")
    assert "PERIOD" in wide.splitlines()[0]
    assert "2026-11" in wide.splitlines()[1]


def test_defaults_are_applied_by_the_api_server(crds: KubeCluster) -> None:
    plan = valid_priceplan("defaults-plan")
    crds.apply(plan)
    stored = crds.get_json("priceplan", "defaults-plan")
    assert stored["spec"]["billingPeriod"] == "calendarMonth"
    assert stored["spec"]["meters"][1]["included"] == "0"
