"""The bill and status steps (Biller + TenantReconciler) with a real SQLite ledger and a
recording writer in place of the Kubernetes API: status and Events for a missing plan and
a namespace conflict, status patched only on change, PeriodClosed from the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import TokenUsage
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.billing.statements import final_statement
from kubemeter_operator.controller.reconcile import CycleFacts, TenantReconciler
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage import Period

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

PLAN = PricePlan.model_validate(
    {
        "metadata": {"name": "std"},
        "spec": {
            "currency": "USD",
            "platformFee": "10",
            "meters": [
                {"name": "prompt", "kind": "promptTokens", "unit": "1k-tokens",
                 "pricing": {"model": "flat", "unitPrice": "1"}},
            ],
        },
    }
)  # fmt: skip


def tenant(name: str, namespace: str, created: str, **spec: Any) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": {"pricePlanRef": {"name": "std"}, "namespaces": [namespace], **spec},
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str, str]] = []

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append((plural, name, patch))

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((obj["metadata"]["name"], reason, type_, message))


class Steps:
    """Bill then report, as `controller.cycle.OperatorCycle.run_once` does after metering."""

    def __init__(self, ledger: Ledger) -> None:
        self.writer = Recorder()
        self.biller = Biller(ledger)
        self.reconciler = TenantReconciler(ledger, self.writer)

    def __call__(
        self,
        tenants: dict[str, Tenant],
        now: datetime,
        metered_until: datetime | None = None,
        plans: dict[str, PricePlan] | None = None,
    ) -> None:
        plans = {"std": PLAN} if plans is None else plans
        covered = metered_until or now - timedelta(seconds=30)
        report = self.biller.run(now, tenants, plans, covered)
        asyncio.run(self.reconciler.reconcile_all(tenants, plans, CycleFacts(now, covered), report))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield led
    led.close()


def tokens(event_id: str, prompt: int, at: datetime = NOW) -> TokenUsage:
    return TokenUsage(id=event_id, model="m", prompt_tokens=prompt, timestamp=at)


def test_missing_plan_and_namespace_conflict_show_in_status_and_events(ledger: Ledger) -> None:
    steps = Steps(ledger)
    first = tenant("first", "shared", "2026-11-01T00:00:00Z")
    later = tenant("later", "shared", "2026-11-02T00:00:00Z")
    orphan = tenant("orphan", "alone", "2026-11-01T00:00:00Z", pricePlanRef={"name": "nope"})
    steps({t.name: t for t in (first, later, orphan)}, NOW)

    status = {name: patch["status"] for _, name, patch in steps.writer.patches}
    conditions = {
        name: {c["type"]: c["status"] for c in s["conditions"]} for name, s in status.items()
    }
    assert conditions["later"]["NamespaceConflict"] == "True"
    assert conditions["first"]["NamespaceConflict"] == "False"
    assert conditions["orphan"]["PricePlanFound"] == "False"
    assert status["orphan"]["phase"] == "Warning"
    reasons = [(e[0], e[1], e[2]) for e in steps.writer.events]
    assert ("later", "NamespaceConflict", "Warning") in reasons
    assert ("orphan", "PricePlanNotFound", "Warning") in reasons
    assert not [e for e in reasons if e[0] == "first"]
    message = next(c for c in status["later"]["conditions"] if c["type"] == "NamespaceConflict")
    assert "shared" in message["message"]
    assert "first" in message["message"]


def test_status_is_patched_only_when_it_changes(ledger: Ledger) -> None:
    steps = Steps(ledger)
    acme = {"acme": tenant("acme", "acme", "2026-11-01T00:00:00Z")}
    steps(acme, NOW)
    steps(acme, NOW)
    assert len(steps.writer.patches) == 1
    ledger.record_events("acme", [tokens("e1", 2000)])
    steps(acme, NOW)
    assert len(steps.writer.patches) == 2
    assert steps.writer.patches[-1][2]["status"]["total"] == "12.00"


def test_period_closes_once_metering_has_covered_its_end_and_the_grace(ledger: Ledger) -> None:
    steps = Steps(ledger)
    acme = {"acme": tenant("acme", "acme", "2026-10-01T00:00:00Z")}
    october = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    ledger.record_events("acme", [tokens("oct", 3000, october)])
    steps(acme, october)
    nov_first = datetime(2026, 11, 1, 0, 0, 10, tzinfo=UTC)
    # November has begun but metering has not covered the grace after October: it closes
    steps(acme, nov_first, metered_until=datetime(2026, 10, 31, 23, 59, 45, tzinfo=UTC))
    status = steps.writer.patches[-1][2]["status"]
    assert status["period"] == "2026-11"
    assert status["previousPeriod"] == {
        "period": "2026-10", "state": "Closing", "currency": "USD", "total": "13.00"
    }  # fmt: skip
    steps(acme, nov_first + timedelta(minutes=59), metered_until=nov_first + timedelta(minutes=58))
    assert final_statement(ledger, "acme", Period(2026, 10)) is None
    later = nov_first + timedelta(hours=1, minutes=1)
    steps(acme, later, metered_until=later - timedelta(seconds=30))
    final = final_statement(ledger, "acme", Period(2026, 10))
    assert final is not None
    assert final.total == 13
    closed = [e for e in steps.writer.events if e[1] == "PeriodClosed"]
    assert len(closed) == 1
    assert "13.00 USD" in closed[0][3]
    assert steps.writer.patches[-1][2]["status"]["previousPeriod"]["state"] == "Final"
    steps(acme, later + timedelta(minutes=5))  # never again
    assert len([e for e in steps.writer.events if e[1] == "PeriodClosed"]) == 1


def test_untrusted_series_quarantine_and_a_refused_token_reach_the_tenant(
    ledger: Ledger,
) -> None:
    steps = Steps(ledger)
    ref = {"namespace": "km", "name": "acme-token"}
    acme = {"acme": tenant("acme", "acme", "2026-11-01T00:00:00Z", apiTokenSecretRef=ref)}
    report = steps.biller.run(NOW, acme, {"std": PLAN}, NOW)
    facts = CycleFacts(
        NOW,
        NOW,
        untrusted={"acme": "it was scraped by job 'kubernetes-pods', not the exporter's"},
        quarantined={"acme": ("usage of gpu series 0a1b held back (over the bound)",)},
        token_problems={"acme": "its token is weak: shorter than 32 bytes"},
    )
    asyncio.run(steps.reconciler.reconcile_all(acme, {"std": PLAN}, facts, report))
    conditions = {c["type"]: c for c in steps.writer.patches[-1][2]["status"]["conditions"]}
    assert conditions["UntrustedUsage"]["status"] == "True"
    assert "kubernetes-pods" in conditions["UntrustedUsage"]["message"]
    assert conditions["ApiTokenValid"]["status"] == "False"
    reasons = [e[1] for e in steps.writer.events]
    assert {"UntrustedUsageIgnored", "UsageQuarantined", "ApiTokenRefused"} <= set(reasons)
    # the same facts next cycle: conditions hold, no new Events but a new quarantine's
    asyncio.run(
        steps.reconciler.reconcile_all(
            acme,
            {"std": PLAN},
            CycleFacts(NOW, NOW, untrusted=facts.untrusted, token_problems=facts.token_problems),
            report,
        )
    )
    assert [e[1] for e in steps.writer.events] == reasons
