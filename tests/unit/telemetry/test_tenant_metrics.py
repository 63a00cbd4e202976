"""The operator's per-tenant metrics: gauges rendered from the watched Tenant status (the
same on every replica, gone with the Tenant), counters of what the acting replica metered
and enforced, and every exposed name and label set as `telemetry.contract` declares it."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.billing.biller import BillingReport, TenantBill
from kubemeter_operator.config import OperatorConfig
from kubemeter_operator.controller.budgets import BudgetStep
from kubemeter_operator.controller.service import OperatorService
from kubemeter_operator.enforcement.enforcer import EnforcementResult
from kubemeter_operator.ledger import SuspensionRow
from kubemeter_operator.ledger import enforcement as wal
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.telemetry import contract as c
from kubemeter_operator.telemetry.metrics import TenantMetrics, tenant_samples
from kubemeter_operator.usage import Period

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PERIOD = Period.of(NOW)


def body(name: str = "acme", *, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "pricePlanRef": {"name": "std"},
            "namespaces": [name],
            "budget": {"limit": "1000", "enforcement": "scaleDown"},
            "wallet": {"enabled": True, "lowBalanceThreshold": "50"},
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


STATUS: dict[str, Any] = {
    "period": str(PERIOD),
    "periodStart": PERIOD.start.isoformat(),
    "periodEnd": PERIOD.end.isoformat(),
    "currency": "EUR",
    "total": "850.125",
    "budget": {"limit": "1000", "used": "850.125", "usedPercent": "85.01",
               "remaining": "149.875", "thresholdsCrossed": [50, 80]},
    "wallet": {"balance": "12.50", "low": True},
    "forecast": {"projectedTotal": "1234.56", "budgetExhaustedAt": "2026-11-25T00:00:00Z"},
    "phase": "Warning",
    "suspendedWorkloads": [{"kind": "Deployment", "namespace": "acme", "name": "llm",
                            "replicas": 3}],
    "enforcement": {"state": "Suspended", "trigger": "budgetExceeded", "reason": "over",
                    "period": str(PERIOD), "startedAt": NOW.isoformat(), "overshoot": "3.20"},
    "lastMeteredTime": NOW.isoformat(),
}  # fmt: skip


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def of(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


def test_gauges_are_the_tenant_status_with_money_as_float_at_the_edge() -> None:
    tenant = Tenant.model_validate(body(status=STATUS))
    got = {(spec.name, labels): value for spec, labels, value in tenant_samples(tenant)}
    assert got[(c.TENANT_SPEND.name, ("acme", "EUR"))] == 850.125
    assert got[(c.TENANT_BUDGET_LIMIT.name, ("acme", "EUR"))] == 1000.0
    # the exact ratio, not the status' rounded percent
    assert got[(c.TENANT_BUDGET_USED_RATIO.name, ("acme",))] == float(Decimal("0.850125"))
    assert got[(c.TENANT_WALLET_BALANCE.name, ("acme", "EUR"))] == 12.5
    assert got[(c.TENANT_WALLET_LOW.name, ("acme",))] == 1.0
    assert got[(c.TENANT_FORECAST_SPEND.name, ("acme", "EUR"))] == 1234.56
    assert (
        got[(c.TENANT_BUDGET_EXHAUSTED_AT.name, ("acme",))]
        == datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    )
    assert got[(c.TENANT_SUSPENDED_WORKLOADS.name, ("acme",))] == 1.0
    assert got[(c.TENANT_OVERSHOOT.name, ("acme", "EUR"))] == 3.2
    assert got[(c.TENANT_PERIOD_END.name, ("acme",))] == PERIOD.end.timestamp()
    assert got[(c.TENANT_LAST_METERED.name, ("acme",))] == NOW.timestamp()
    phases = {labels[1]: v for (n, labels), v in got.items() if n == c.TENANT_PHASE.name}
    assert phases == {"Active": 0.0, "Warning": 1.0, "Suspended": 0.0}
    assert all(isinstance(v, float) for v in got.values())


def test_a_tenant_without_status_has_only_its_info_series() -> None:
    (only,) = tenant_samples(Tenant.model_validate(body()))
    assert only == (c.TENANT_INFO, ("acme", "std"), 1.0)


def test_every_exposed_metric_and_label_set_is_the_contracts() -> None:
    service = OperatorService(OperatorConfig(prometheus_url="http://p:9090"))
    service.tenant_event("ADDED", body(status=STATUS))
    found = samples(service.registry)
    exposed = {name for name, _ in found}
    want = {s.name for s in c.METRICS}
    assert want <= exposed, want - exposed
    by_name = {s.name: s for s in c.METRICS}
    for name, labels in found:
        spec = by_name.get(name)
        if spec is not None:
            assert {k for k, _ in labels} == set(spec.labels), (name, labels)


def test_every_replica_exports_the_same_tenant_gauges_and_a_deleted_tenant_none() -> None:
    leader = OperatorService(OperatorConfig(prometheus_url="http://p:9090"))
    standby = OperatorService(OperatorConfig(prometheus_url="http://p:9090"))
    for service in (leader, standby):  # both watch the same Tenant objects
        service.tenant_event("ADDED", body(status=STATUS))
        service.tenant_event("ADDED", body("globex", status={**STATUS, "phase": "Suspended"}))
    leader.tenant_metrics.set_leading(lambda: True)
    leader.tenant_metrics.metered({"acme": Usage(allocated_ms=5_000)})

    def gauges(service: OperatorService) -> dict[Any, float]:
        return {
            key: v for key, v in samples(service.registry).items()
            if key[0] in {s.name for s in c.STATUS_METRICS}
        }  # fmt: skip

    assert gauges(leader) == gauges(standby)
    assert of(gauges(leader), c.TENANT_SPEND.name)[(("currency", "EUR"), ("tenant", "globex"))]
    assert of(samples(leader.registry), c.OPERATOR_LEADING.name) == {(): 1.0}
    assert of(samples(standby.registry), c.OPERATOR_LEADING.name) == {(): 0.0}

    for service in (leader, standby):
        service.tenant_event("DELETED", copy.deepcopy(body("globex")))
    for service in (leader, standby):
        left = {dict(labels).get("tenant") for (_, labels) in samples(service.registry)}
        assert "globex" not in left
        assert "acme" in left


@dataclass
class Usage:
    allocated_ms: int = 0
    active_ms: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


def test_usage_counters_start_at_zero_and_count_only_current_tenants() -> None:
    tenants: dict[str, Tenant] = {"acme": Tenant.model_validate(body())}
    registry = CollectorRegistry()
    metrics = TenantMetrics(lambda: dict(tenants), registry)
    metrics.known("acme")
    tokens = c.TENANT_TOKENS.name
    assert of(samples(registry), tokens) == {
        (("kind", k), ("tenant", "acme")): 0.0 for k in c.TOKEN_KINDS
    }
    window = {
        "acme": Usage(7_000, 5_600, prompt_tokens=1200, completion_tokens=300,
                      cached_prompt_tokens=200),
        "_unassigned": Usage(9_000),  # kubemeter_unassigned_* counts it
        "gone": Usage(1_000),  # deleted while the window was metered
    }  # fmt: skip
    metrics.metered(window)
    metrics.metered({"acme": Usage(3_000, 0)})
    found = samples(registry)
    assert of(found, c.TENANT_GPU_ALLOCATED_MS.name) == {(("tenant", "acme"),): 10_000.0}
    assert of(found, c.TENANT_GPU_ACTIVE_MS.name) == {(("tenant", "acme"),): 5_600.0}
    assert of(found, tokens)[(("kind", "cached_prompt"), ("tenant", "acme"))] == 200.0
    assert of(found, tokens)[(("kind", "prompt"), ("tenant", "acme"))] == 1200.0

    del tenants["acme"]
    metrics.forget("acme")
    assert not any(dict(labels).get("tenant") for _, labels in samples(registry))


# -- the enforcement counter, through the budget step ---------------------------------------


class FakeLedger:
    def __init__(self) -> None:
        self.active: dict[str, SuspensionRow] = {}

    def active_suspensions(self) -> dict[str, SuspensionRow]:
        return dict(self.active)

    def latest_suspensions(self) -> dict[str, SuspensionRow]:
        return dict(self.active)

    def suspension_workloads(self, suspension_id: str) -> list[Any]:
        return []

    def record_notices(self, notices: list[Any]) -> None:
        pass


class FakeEnforcer:
    """Suspends at once, restores at once; records the rows in the fake ledger."""

    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger

    async def apply(self, tenant: Tenant, decision: Any, ctx: Any, active: Any) -> Any:
        row = active or SuspensionRow(
            id="s1", tenant=tenant.name, period=ctx.period, trigger=str(decision.trigger),
            limit=Decimal(1000), reason="over", state=wal.SUSPENDED, started_at=ctx.now,
        )  # fmt: skip
        if decision.action.value == "restore":
            row = SuspensionRow(**{**row.__dict__, "state": wal.RESTORED})
            self.ledger.active.pop(tenant.name, None)
        else:
            self.ledger.active[tenant.name] = row
        return EnforcementResult(suspension=row)


class NoWriter:
    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        pass


def statement(total: str) -> Statement:
    return Statement(
        currency="EUR", period=str(PERIOD), period_start=PERIOD.start, period_end=PERIOD.end,
        platform_fee=Decimal(0), subtotal=Decimal(total), discount_percent=Decimal(0),
        discount=Decimal(0), total=Decimal(total), cost=Decimal(0), margin=Decimal(total),
    )  # fmt: skip


def test_suspensions_started_and_restored_are_counted_once_each() -> None:
    def tenant(limit: str) -> Tenant:
        spec = {**body()["spec"], "wallet": None,
                "budget": {"limit": limit, "enforcement": "scaleDown"}}  # fmt: skip
        return Tenant.model_validate({**body(), "spec": spec})

    tenants = {"acme": tenant("1000")}
    registry = CollectorRegistry()
    metrics = TenantMetrics(lambda: dict(tenants), registry)
    metrics.known("acme")
    ledger = FakeLedger()
    step = BudgetStep(ledger, FakeEnforcer(ledger), NoWriter(), lambda _: [],  # type: ignore[arg-type]
                      telemetry=metrics)  # fmt: skip

    def cycle(total: str) -> None:
        report = BillingReport({"acme": TenantBill("acme", PERIOD, statement(total))})
        asyncio.run(step.run(tenants, report, now=NOW, metered_until=NOW,
                             leading=lambda: True))  # fmt: skip

    def actions() -> dict[str, float]:
        found = of(samples(registry), c.ENFORCEMENT_ACTIONS.name)
        return {dict(labels)["action"]: v for labels, v in found.items()}

    assert actions() == {"suspend": 0.0, "restore": 0.0}
    cycle("1200")  # over the limit: suspend
    cycle("1250")  # still over: the suspension stays, no new action
    assert actions() == {"suspend": 1.0, "restore": 0.0}
    tenants["acme"] = tenant("5000")  # the limit is raised: restore, once
    cycle("1250")
    cycle("1260")
    assert actions() == {"suspend": 1.0, "restore": 1.0}
