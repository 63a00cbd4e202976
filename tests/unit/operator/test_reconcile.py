"""TenantReconciler with a real SQLite ledger and a recording writer (in place of the
Kubernetes API): status and Events for a missing plan and a namespace conflict, prepaid
wallet burns that survive a crash between intent and burn, and period close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import TokenUsage
from kubemeter_operator.billing.statements import final_statement
from kubemeter_operator.controller.reconcile import CycleFacts, TenantReconciler, wallet_checkpoint
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def run(step: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(step)


NOV = Period(2026, 11)

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
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append((plural, name, patch))

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((obj["metadata"]["name"], reason, type_))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield led
    led.close()


def tokens(event_id: str, prompt: int, at: datetime = NOW) -> TokenUsage:
    return TokenUsage(id=event_id, model="m", prompt_tokens=prompt, timestamp=at)


def test_missing_plan_and_namespace_conflict_show_in_status_and_events(
    ledger: Ledger,
) -> None:
    writer = Recorder()
    rec = TenantReconciler(ledger, writer)
    first = tenant("first", "shared", "2026-11-01T00:00:00Z")
    later = tenant("later", "shared", "2026-11-02T00:00:00Z")
    orphan = tenant("orphan", "alone", "2026-11-01T00:00:00Z", pricePlanRef={"name": "nope"})
    tenants = {t.name: t for t in (first, later, orphan)}
    run(rec.reconcile_all(tenants, {"std": PLAN}, CycleFacts(NOW, NOW)))

    status = {name: patch["status"] for _, name, patch in writer.patches}
    conditions = {
        name: {c["type"]: c["status"] for c in s["conditions"]} for name, s in status.items()
    }
    assert conditions["later"]["NamespaceConflict"] == "True"
    assert conditions["first"]["NamespaceConflict"] == "False"
    assert conditions["orphan"]["PricePlanFound"] == "False"
    assert status["orphan"]["phase"] == "Warning"
    assert ("later", "NamespaceConflict", "Warning") in writer.events
    assert ("orphan", "PricePlanNotFound", "Warning") in writer.events
    assert not [e for e in writer.events if e[0] == "first"]
    message = next(c for c in status["later"]["conditions"] if c["type"] == "NamespaceConflict")
    assert "shared" in message["message"]
    assert "first" in message["message"]


def test_status_is_patched_only_when_it_changes(ledger: Ledger) -> None:
    writer = Recorder()
    rec = TenantReconciler(ledger, writer)
    acme = tenant("acme", "acme", "2026-11-01T00:00:00Z")
    run(rec.reconcile_all({"acme": acme}, {"std": PLAN}, CycleFacts(NOW, NOW)))
    run(rec.reconcile_all({"acme": acme}, {"std": PLAN}, CycleFacts(NOW, NOW)))
    assert len(writer.patches) == 1
    ledger.record_events("acme", [tokens("e1", 2000)])
    run(rec.reconcile_all({"acme": acme}, {"std": PLAN}, CycleFacts(NOW, NOW)))
    assert len(writer.patches) == 2
    assert writer.patches[-1][2]["status"]["total"] == "12.00"


def test_prepaid_wallet_burns_each_charge_once_even_across_a_crash(
    ledger: Ledger,
) -> None:
    writer = Recorder()
    acme = tenant("acme", "acme", "2026-11-01T00:00:00Z", wallet={"enabled": True})
    ledger.topup("acme", Decimal("100"), "USD", "t1")
    rec = TenantReconciler(ledger, writer)
    run(rec.reconcile(acme, PLAN, CycleFacts(NOW, NOW), {}))
    assert ledger.balance("acme") == Decimal("90.00")  # platform fee
    run(rec.reconcile(acme, PLAN, CycleFacts(NOW, NOW), {}))
    assert ledger.balance("acme") == Decimal("90.00")  # nothing new: nothing burned

    ledger.record_events("acme", [tokens("e1", 5000)])
    # a crash after the intent was written but before the burn happened
    ledger.set_checkpoint(
        wallet_checkpoint("acme"),
        {"period": "2026-11", "charged": "15",
         "pending": {"key": "burn/acme/2026-11/15", "amount": "5"}},
    )  # fmt: skip
    restarted = TenantReconciler(ledger, Recorder())
    status = run(restarted.reconcile(acme, PLAN, CycleFacts(NOW, NOW), {}))
    assert ledger.balance("acme") == Decimal("85")  # the pending burn, exactly once
    assert status.wallet is not None
    assert status.wallet.balance == Decimal("85")
    run(restarted.reconcile(acme, PLAN, CycleFacts(NOW, NOW), {}))
    wallet = ledger.wallet("acme")
    assert wallet.taken == Decimal("15")
    assert wallet.topped_up - wallet.taken == wallet.balance


def test_period_closes_once_metering_has_covered_it(ledger: Ledger) -> None:
    writer = Recorder()
    rec = TenantReconciler(ledger, writer)
    acme = tenant("acme", "acme", "2026-10-01T00:00:00Z")
    october = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    ledger.record_events("acme", [tokens("oct", 3000, october)])
    run(rec.reconcile(acme, PLAN, CycleFacts(october, october), {}))

    # November has begun but metering has not reached Nov 1 yet: nothing closes
    nov_first = datetime(2026, 11, 1, 0, 0, 10, tzinfo=UTC)
    run(rec.reconcile(acme, PLAN, CycleFacts(nov_first, october), {}))
    assert final_statement(ledger, "acme", Period(2026, 10)) is None

    rec2 = TenantReconciler(ledger, writer)
    acme_seen = acme.model_copy(update={"status": None})
    run(rec2.reconcile(acme_seen, PLAN, CycleFacts(october, october), {}))
    covered = datetime(2026, 11, 1, 0, 0, 5, tzinfo=UTC)
    status = run(rec2.reconcile(acme_seen, PLAN, CycleFacts(nov_first, covered), {}))
    final = final_statement(ledger, "acme", Period(2026, 10))
    assert final is not None
    assert final.total == Decimal("13.00")
    assert status.period == "2026-11"
    assert ("acme", "PeriodClosed", "Normal") in writer.events
