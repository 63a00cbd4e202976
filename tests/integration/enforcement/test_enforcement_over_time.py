"""Budgets that stop the burn, proven on the time-travel harness: the whole operator cycle
(meter -> bill -> decide -> enforce -> status -> notify) on simulated time against real
SQLite and PostgreSQL ledgers, with simulated GPU workloads whose pods hold the GPUs the
operator meters (`support.workloads`): scaling one to 0 really stops its spend.

After each scenario `check_invariants` holds (every invoice equals an independent
recomputation, nothing billed twice or lost), and every workload ends exactly as it was
recorded before kubemeter touched it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from support.timetravel import TimeTravel, check_invariants, kill_at

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 30, 8, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
EVERY = timedelta(minutes=5)

GPU_PLAN: dict[str, Any] = {
    "currency": "USD",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
         "pricing": {"model": "flat", "unitPrice": "10"}},
    ],
}  # fmt: skip
RATE_PER_GPU_HOUR = Decimal(10)


@pytest.fixture
def tt(ledger_url: str) -> Iterator[TimeTravel]:
    harness = TimeTravel(ledger_url, start=START)
    harness.add_plan("gpu", GPU_PLAN)
    yield harness
    harness.close()


def status(tt: TimeTravel, tenant: str) -> dict[str, Any]:
    return tt.kube.status[tenant]


def reasons(tt: TimeTravel, tenant: str, reason: str) -> list[str]:
    return [e.message for e in tt.kube.events if e.tenant == tenant and e.reason == reason]


def total(tt: TimeTravel, tenant: str) -> Decimal:
    return Decimal(status(tt, tenant)["total"])


def until_state(tt: TimeTravel, tenant: str, state: str, *, limit: timedelta) -> None:
    end = tt.now + limit
    while tt.now < end:
        tt.advance(tt.now + EVERY, every=EVERY)
        enforcement = tt.kube.status.get(tenant, {}).get("enforcement") or {}
        if enforcement.get("state") == state:
            return
    raise AssertionError(f"{tenant} never reached {state}: {tt.kube.status.get(tenant)}")


def max_overshoot(tt: TimeTravel, gpus: int) -> Decimal:
    """What can burn between the usage crossing the limit and the stop: the metering step
    and lag (the window that shows the crossing is rated that late) and one cycle (the
    stop is made on the cycle that rates it, the pods are gone by the next)."""
    late = tt.config.step + tt.config.lag + EVERY
    return RATE_PER_GPU_HOUR * gpus * Decimal(late // timedelta(seconds=1)) / 3600


def test_scale_down_stops_the_burn_once_and_a_new_period_restores_it_exactly(
    tt: TimeTravel,
) -> None:
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  budget={"limit": "100", "enforcement": "scaleDown"})  # fmt: skip
    tt.add_tenant("globex", plan="gpu", namespaces=["globex"])
    w = tt.workloads
    w.create("Deployment", "acme", "train", replicas=2)
    w.create("StatefulSet", "acme", "kv", replicas=1)
    w.create("Job", "acme", "batch")
    w.create("CronJob", "acme", "nightly")
    w.create("Deployment", "acme", "web", replicas=3, gpu=False)
    w.create("Deployment", "globex", "infer", replicas=1)
    # 4 GPUs at 10 USD/h: the 100 USD budget is spent after 2.5 hours
    until_state(tt, "acme", "Suspended", limit=timedelta(hours=4))
    assert w.replicas("Deployment", "acme", "train") == 0
    assert w.replicas("StatefulSet", "acme", "kv") == 0
    assert w.suspended("Job", "acme", "batch")
    assert w.suspended("CronJob", "acme", "nightly")
    assert w.replicas("Deployment", "acme", "web") == 3  # no GPU: never touched
    assert w.replicas("Deployment", "globex", "infer") == 1  # another tenant
    acme = status(tt, "acme")
    assert acme["phase"] == "Suspended"
    recorded = {(s["kind"], s["name"]): s for s in acme["suspendedWorkloads"]}
    assert set(recorded) == {("Deployment", "train"), ("StatefulSet", "kv"), ("Job", "batch"),
                             ("CronJob", "nightly")}  # fmt: skip
    assert recorded[("Deployment", "train")]["replicas"] == 2
    assert recorded[("Job", "batch")]["suspend"] is False
    overshoot = Decimal(acme["enforcement"]["overshoot"])
    assert 0 <= overshoot <= max_overshoot(tt, 4)
    assert acme["enforcement"]["trigger"] == "budgetExceeded"

    # the burn stopped: hours later (a restart and two replicas at once in between) the
    # total is what it was once metering covered the stop, and nothing was announced twice
    tt.advance(tt.now + timedelta(hours=1), every=EVERY)
    stopped_total = total(tt, "acme")
    tt.restart()
    tt.advance(tt.now + timedelta(hours=1), every=EVERY)
    tt.replica()
    tt.advance(tt.now + timedelta(hours=1), every=EVERY)
    tt.operators.pop().close()
    assert total(tt, "acme") == stopped_total
    assert Decimal(status(tt, "acme")["enforcement"]["overshoot"]) == stopped_total - 100
    assert len(reasons(tt, "acme", "BudgetThresholdCrossed")) == 2  # 50 % and 80 %, once each
    assert len(reasons(tt, "acme", "BudgetExceeded")) == 1
    assert len(reasons(tt, "acme", "WorkloadsSuspended")) == 1
    assert "spent" in reasons(tt, "acme", "BudgetExceeded")[0]
    assert reasons(tt, "acme", "WorkloadsRestored") == []
    assert reasons(tt, "globex", "WorkloadsSuspended") == []

    # December: the budget is fresh, everything comes back as it was, once
    tt.advance(DEC_1 + timedelta(hours=2), every=EVERY)
    assert w.replicas("Deployment", "acme", "train") == 2
    assert w.replicas("StatefulSet", "acme", "kv") == 1
    assert not w.suspended("Job", "acme", "batch")
    assert not w.suspended("CronJob", "acme", "nightly")
    assert w.replicas("Deployment", "acme", "web") == 3
    acme = status(tt, "acme")
    assert acme["phase"] == "Active"
    assert acme.get("suspendedWorkloads", []) == []
    assert acme["enforcement"]["state"] == "Restored"
    restored = reasons(tt, "acme", "WorkloadsRestored")
    assert len(restored) == 1
    assert "a new period (2026-12) began" in restored[0]
    check_invariants(tt)


def test_a_workload_started_again_while_suspended_is_stopped_and_the_fighter_named(
    tt: TimeTravel,
) -> None:
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  budget={"limit": "20", "enforcement": "scaleDown"})  # fmt: skip
    w = tt.workloads
    w.create("Deployment", "acme", "train", replicas=2)
    until_state(tt, "acme", "Suspended", limit=timedelta(hours=3))
    w.scale_by("argocd-application-controller", "Deployment", "acme", "train", 5)  # self-heal
    tt.advance(tt.now + EVERY, every=EVERY)
    assert w.replicas("Deployment", "acme", "train") == 0
    fought = reasons(tt, "acme", "EnforcementFought")
    assert len(fought) == 1
    assert "argocd-application-controller (Update on /scale)" in fought[0]
    # raising the limit lifts it: back to the 2 recorded before the first stop, not 5
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  budget={"limit": "1000", "enforcement": "scaleDown"})  # fmt: skip
    tt.advance(tt.now + 2 * EVERY, every=EVERY)
    assert w.replicas("Deployment", "acme", "train") == 2
    assert "the limit was raised to 1000" in reasons(tt, "acme", "WorkloadsRestored")[0]
    check_invariants(tt)


def test_an_empty_prepaid_wallet_suspends_and_a_top_up_restores(tt: TimeTravel) -> None:
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  wallet={"enabled": True, "lowBalanceThreshold": "10"})  # fmt: skip
    tt.topup("acme", "30", "first")
    w = tt.workloads
    w.create("Deployment", "acme", "train", replicas=2)
    until_state(tt, "acme", "Suspended", limit=timedelta(hours=3))
    assert w.replicas("Deployment", "acme", "train") == 0
    acme = status(tt, "acme")
    assert acme["enforcement"]["trigger"] == "walletEmpty"
    assert len(reasons(tt, "acme", "WalletLow")) == 1
    assert len(reasons(tt, "acme", "WalletEmpty")) == 1
    # the shortfall (what burnt after the wallet ran dry) is the overshoot
    assert Decimal(acme["enforcement"]["overshoot"]) == Decimal(acme["wallet"]["shortfall"])
    tt.advance(tt.now + timedelta(hours=1), every=EVERY)
    assert w.replicas("Deployment", "acme", "train") == 0  # still empty: still stopped
    tt.topup("acme", "100", "second")  # covers the shortfall
    tt.advance(tt.now + 2 * EVERY, every=EVERY)
    assert w.replicas("Deployment", "acme", "train") == 2
    assert "the wallet was topped up" in reasons(tt, "acme", "WorkloadsRestored")[0]
    check_invariants(tt)


def test_stop_before_stops_ahead_of_the_limit(tt: TimeTravel) -> None:
    budget = {"limit": "100", "enforcement": "scaleDown", "stopBefore": "30m"}
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"], budget=budget)
    w = tt.workloads
    w.create("Deployment", "acme", "train", replicas=4)  # 40 USD/h
    until_state(tt, "acme", "Suspended", limit=timedelta(hours=4))
    tt.advance(tt.now + timedelta(hours=1), every=EVERY)
    acme = status(tt, "acme")
    assert acme["enforcement"]["trigger"] == "budgetForecast"
    assert total(tt, "acme") < 100  # stopped at, not after, the limit
    assert Decimal(acme["enforcement"]["overshoot"]) == 0
    assert reasons(tt, "acme", "BudgetExceeded") == []
    check_invariants(tt)


@pytest.mark.parametrize("after", [True, False], ids=["after-a-change", "before-a-change"])
def test_killed_mid_suspend_and_mid_restore_every_workload_ends_as_recorded(
    tt: TimeTravel, after: bool
) -> None:
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  budget={"limit": "30", "enforcement": "scaleDown"})  # fmt: skip
    w = tt.workloads
    sizes = {f"svc-{i}": 1 + i % 3 for i in range(12)}
    for name, n in sizes.items():
        w.create("Deployment", "acme", name, replicas=n)
    w.create("Job", "acme", "batch")
    kill_at(w, "scale", 5, after=after)  # mid-suspend: some scaled, some recorded only
    until_state(tt, "acme", "Suspended", limit=timedelta(hours=3))
    assert tt.crashes, "the kill never happened"
    assert all(w.replicas("Deployment", "acme", n) == 0 for n in sizes)
    recorded = {s["name"]: s.get("replicas") for s in status(tt, "acme")["suspendedWorkloads"]}
    assert {n: recorded[n] for n in sizes} == sizes  # the originals, never a 0 we wrote
    crashes = len(tt.crashes)
    kill_at(w, "scale", 4, after=after)  # mid-restore
    tt.add_tenant("acme", plan="gpu", namespaces=["acme"],
                  budget={"limit": "30", "enforcement": "alert"})  # fmt: skip
    until_state(tt, "acme", "Restored", limit=timedelta(hours=1))
    assert len(tt.crashes) == crashes + 1
    assert {n: w.replicas("Deployment", "acme", n) for n in sizes} == sizes
    assert not w.suspended("Job", "acme", "batch")
    assert len(reasons(tt, "acme", "WorkloadsRestored")) == 1
    check_invariants(tt)
