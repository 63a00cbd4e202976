"""`top` and `why` from Tenant status alone: spend rows, the burn rate, and what a
suspension or a warning says and how it lifts, for each trigger."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kubemeter_operator.commands import top, why

PERIOD = {"period": "2026-11", "periodStart": "2026-11-01T00:00:00Z",
          "periodEnd": "2026-12-01T00:00:00Z", "currency": "USD"}  # fmt: skip


def tenant(name: str, spec: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "kubemeter.dev/v1alpha1", "kind": "Tenant",
                           "metadata": {"name": name},
                           "spec": {"pricePlanRef": {"name": "gpu-standard"},
                                    "namespaces": [f"{name}-prod"], **spec}}  # fmt: skip
    if status is not None:
        obj["status"] = status
    return obj


SCALE_DOWN = {"limit": "5000", "alertThresholds": [50, 80, 100], "enforcement": "scaleDown"}
ACME = tenant("acme", {"displayName": "Acme Corp", "budget": SCALE_DOWN}, {
    **PERIOD, "total": "5012.40", "phase": "Suspended",
    "lastMeteredTime": "2026-11-20T12:00:00Z",
    "meters": [
        {"name": "h100", "kind": "gpuTime", "unit": "gpu-hour", "quantity": "1440000000",
         "billedQuantity": "400", "included": "0", "billable": "400", "charge": "1200"},
        {"name": "prompt", "kind": "promptTokens", "unit": "1m-tokens", "quantity": "39000000",
         "billedQuantity": "39", "included": "0", "billable": "39", "charge": "117"},
        {"name": "completion", "kind": "completionTokens", "unit": "1m-tokens",
         "quantity": "600000", "billedQuantity": "0.6", "included": "0", "billable": "0.6",
         "charge": "9"},
    ],
    "budget": {"limit": "5000", "used": "5012.40", "usedPercent": "100.25",
               "remaining": "-12.40", "thresholdsCrossed": [50, 80, 100]},
    "forecast": {"projectedTotal": "5012.40"},
    "enforcement": {"state": "Suspended", "trigger": "budgetExceeded",
                    "reason": "period total 5012.40 USD reached the budget limit 5000 USD",
                    "period": "2026-11", "startedAt": "2026-11-20T10:00:00Z",
                    "stoppedAt": "2026-11-20T10:00:40Z", "limit": "5000", "overshoot": "12.40"},
    "suspendedWorkloads": [
        {"kind": "Deployment", "namespace": "acme-prod", "name": "vllm-llama", "replicas": 3,
         "state": "Stopped", "suspendedAt": "2026-11-20T10:00:05Z"},
        {"kind": "Job", "namespace": "acme-prod", "name": "finetune", "suspend": False,
         "state": "Stopped", "suspendedAt": "2026-11-20T10:00:05Z"},
    ],
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Metered", "message": ""},
        {"type": "ApiTokenValid", "status": "Unknown", "reason": "NoTokenSecret",
         "message": "no apiTokenSecretRef"},
        {"type": "MeteringDegraded", "status": "True", "reason": "SourceUnavailable",
         "message": "usage from these sources is delayed: vllm: connection refused"},
    ],
})  # fmt: skip
GLOBEX = tenant("globex", {"budget": {"limit": "1000", "alertThresholds": [50, 90]}}, {
    **PERIOD, "total": "912.3", "phase": "Warning", "lastMeteredTime": "2026-11-16T00:00:00Z",
    "budget": {"limit": "1000", "used": "912.3", "usedPercent": "91.23", "remaining": "87.7",
               "thresholdsCrossed": [50, 90]},
    # 912.30 + 15 days at 2.50 USD/h
    "forecast": {"projectedTotal": "1812.30", "budgetExhaustedAt": "2026-11-17T11:04:00Z"},
})  # fmt: skip
NEW = tenant("new-tenant", {}, None)


def test_top_rows_are_read_from_status_and_json_is_exact() -> None:
    rows = top.by_spend([top.spend_row(t) for t in (GLOBEX, NEW, ACME)])
    assert [r.tenant for r in rows] == ["acme", "globex", "new-tenant"]
    doc = json.loads(json.dumps([r.as_json() for r in rows], default=str))
    assert doc[0] == {
        "tenant": "acme", "phase": "Suspended", "period": "2026-11", "currency": "USD",
        "spend": "5012.40", "budget": "5000", "budgetUsedPercent": "100.25",
        "burnPerHour": "0.0000", "projectedTotal": "5012.40", "gpuMs": "1440000000",
        "tokens": 39_600_000, "suspendedWorkloads": 2,
    }  # fmt: skip
    assert doc[1]["burnPerHour"] == "2.5000"
    assert doc[2]["phase"] is None
    assert doc[2]["spend"] is None


def test_the_top_table_has_human_figures_and_fits_the_width() -> None:
    long = copy.deepcopy(GLOBEX)
    long["metadata"]["name"] = "globex-research-and-development-division-emea"
    rows = top.by_spend([top.spend_row(t) for t in (ACME, long, NEW)])
    lines = top.render(rows, width=120).splitlines()
    assert lines[0].split() == list(top.HEADERS)
    assert max(len(line) for line in lines) == 120
    acme = lines[1].split()
    assert acme[:4] == ["acme", "Suspended", "5,012.40", "USD"]
    assert acme[-2:] == ["39.6M", "2"]
    assert {"400", "100.25%", "5,000.00"} <= set(acme)
    assert lines[2].startswith("globex-research-and-development…  Warning")
    assert "2.50" in lines[2].split()
    assert top.render(rows, width=None).splitlines()[2].startswith(long["metadata"]["name"])


def test_a_narrow_terminal_cuts_names_then_leaves_out_the_least_needed_columns() -> None:
    long = copy.deepcopy(GLOBEX)
    long["metadata"]["name"] = "globex-research-and-development-division-emea"
    lines = top.render([top.spend_row(t) for t in (ACME, long)], width=80).splitlines()
    assert lines[0].split() == ["TENANT", "PHASE", "SPEND", "USED", "BURN/H", "SUSPENDED"]
    assert max(len(line) for line in lines) <= 80
    assert lines[2].startswith("globex-research-and…  Warning")


def test_why_a_budget_suspension_names_the_trigger_workloads_and_what_lifts_it() -> None:
    w = why.explain(ACME)
    assert w.phase == "Suspended"
    assert w.reasons[0].startswith("Suspended since 2026-11-20T10:00:00Z (budgetExceeded): ")
    assert "12.40 USD over the limit" in w.reasons[1]
    assert "alert thresholds fired this period: 50%, 80%, 100%" in w.reasons[2]
    assert [s["name"] for s in w.suspended_workloads] == ["vllm-llama", "finetune"]
    assert w.lifts == [
        "raise spec.budget.limit above the spend, 5,012.40 USD",
        "set spec.budget.enforcement to alert or none (kubemeter then only alerts)",
        "the next period, from 2026-12-01T00:00:00Z",
    ]
    assert [c["type"] for c in w.conditions] == ["MeteringDegraded"]
    text = why.render(w, width=80)
    assert "Phase:      Suspended" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "Deployment  acme-prod  vllm-lla…  Stopped  replicas=3     2026-11-20T10:00:05Z" in text
    assert "Job         acme-prod  finetune   Stopped  suspend=false  2026-11-20T10:00:05Z" in text
    assert "  Deployment  acme-prod  vllm-llama  Stopped" in why.render(w, width=None)
    assert "AUTOSCALER" not in text  # no workload has one


def test_why_a_warning_names_the_threshold_and_the_limit_that_lifts_it() -> None:
    w = why.explain(GLOBEX)
    assert w.budget is not None
    assert w.budget["warningPercent"] == 90
    assert "91.23% of the budget used: Warning from 90%" in w.reasons
    # 912.30 / 1013.67 = 89.9996 % < 90 %; 912.30 / 1013.66 = 90.0006 %
    assert w.lifts[0] == "raise spec.budget.limit to 1,013.67 USD or more (below 90% used)"
    assert w.lifts[1] == "the next period, from 2026-12-01T00:00:00Z"


def test_why_a_forecast_suspension_asks_for_more_than_the_limit_at_suspension() -> None:
    obj = copy.deepcopy(ACME)
    obj["spec"]["budget"]["stopBefore"] = "10m"
    obj["status"]["enforcement"].update(trigger="budgetForecast", limit="4000", overshoot="0")
    w = why.explain(obj)
    assert w.lifts[0].startswith("raise spec.budget.limit above 4,000.00 USD (the limit at")
    assert "within 10m" in w.lifts[0]


def test_why_an_empty_wallet_asks_for_a_top_up_of_what_it_owes() -> None:
    obj = copy.deepcopy(ACME)
    del obj["spec"]["budget"]
    del obj["status"]["budget"]
    obj["spec"]["wallet"] = {"enabled": True}
    obj["status"]["wallet"] = {"balance": "0", "low": True, "shortfall": "42.5"}
    obj["status"]["enforcement"].update(trigger="walletEmpty", reason="the wallet is empty")
    w = why.explain(obj)
    assert w.lifts == ["top up the wallet with at least 42.50 USD (what it owes): kubemeter "
                       "wallet topup acme AMOUNT --currency USD --key KEY"]  # fmt: skip
    assert "owes 42.50 USD" in why.render(w, width=None)


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ({"type": "PricePlanFound", "status": "False", "reason": "NotFound",
          "message": "PricePlan 'gpu-standard' does not exist; usage is recorded but not priced"},
         "PricePlan 'gpu-standard' does not exist; usage is recorded but not priced"),
        ({"type": "EnforcementBlocked", "status": "True", "reason": "ChangeFailed",
          "message": "Deployment acme-prod/x: HTTP 403"},
         "enforcement could not make every change: Deployment acme-prod/x: HTTP 403"),
    ],
)  # fmt: skip
def test_why_names_the_conditions_behind_a_warning(condition: dict[str, Any], reason: str) -> None:
    obj = tenant("t", {}, {**PERIOD, "phase": "Warning", "conditions": [condition]})
    w = why.explain(obj)
    assert reason in w.reasons
    assert w.conditions == [condition]


def test_why_an_active_tenant_has_nothing_to_lift() -> None:
    obj = tenant("calm", {}, {**PERIOD, "total": "10", "phase": "Active"})
    w = why.explain(obj)
    assert w.reasons == ["nothing holds it back: the phase is Active"]
    assert w.lifts == []
    assert "nothing to lift" in why.render(w, width=None)
    assert why.explain(NEW).reasons[0].startswith("no status yet")


def test_why_a_suspension_not_recorded_yet_still_says_what_lifts_it() -> None:
    obj = copy.deepcopy(ACME)
    del obj["status"]["enforcement"]
    w = why.explain(obj)
    assert w.reasons[0].startswith("the budget decision stops GPU work (budgetExceeded)")
    assert w.lifts[0] == "raise spec.budget.limit above the spend, 5,012.40 USD"
