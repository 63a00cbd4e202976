"""Run one enforcement pass in its own process (a test SIGKILLs it part-way).

    python tests/support/enforce_once.py KUBECONFIG LEDGER_URL TENANT_JSON suspend|restore \
        [--delay SECONDS]

The real `Enforcer`, the real `KubeWorkloads` on the given kubeconfig and the real ledger;
`--delay` sleeps before every write to the API server, so a test can kill the process in
the middle of a batch. Prints `done` when the pass finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kubemeter_operator.api.tenant import Budget, BudgetEnforcement, Tenant
from kubemeter_operator.budget.decision import BudgetInputs, Suspension, Trigger, decide
from kubemeter_operator.enforcement.enforcer import EnforceContext, Enforcer
from kubemeter_operator.kube.client import load_api_client
from kubemeter_operator.kube.gpu import GpuResources
from kubemeter_operator.kube.workloads import KubeWorkloads
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage import Period

LIMIT = Decimal(10)
SPENT = Decimal(12)


class SlowWorkloads(KubeWorkloads):
    def __init__(self, api_client: Any, delay: float) -> None:
        super().__init__(api_client)
        self.delay = delay

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        time.sleep(self.delay)
        super().scale(kind, namespace, name, replicas)

    def set_suspend(self, kind: str, namespace: str, name: str, suspend: bool) -> None:
        time.sleep(self.delay)
        super().set_suspend(kind, namespace, name, suspend)


async def enforce(
    enforcer: Enforcer, ledger: Ledger, tenant: Tenant, action: str
) -> tuple[str | None, list[str]]:
    """One pass; returns the suspension's state after it and the problems."""
    now = datetime.now(UTC)
    period = Period.of(now)
    active = ledger.active_suspensions().get(tenant.name)
    if action == "suspend":
        budget = Budget(limit=LIMIT, enforcement=BudgetEnforcement.SCALE_DOWN)
        decision = decide(BudgetInputs(budget, period, SPENT))
    else:
        budget = Budget(limit=LIMIT, enforcement=BudgetEnforcement.ALERT)
        held = Suspension(period, Trigger.BUDGET_EXCEEDED, LIMIT)
        decision = decide(BudgetInputs(budget, period, SPENT, suspension=held))
    ctx = EnforceContext(
        now=now, period=str(period), total=SPENT, overshoot=SPENT - LIMIT,
        namespaces=tenant.spec.namespaces, currency="USD",
    )  # fmt: skip
    result = await enforcer.apply(tenant, decision, ctx, active)
    state = result.suspension.state if result.suspension is not None else None
    return state, result.problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kubeconfig")
    parser.add_argument("ledger")
    parser.add_argument("tenant")
    parser.add_argument("action", choices=["suspend", "restore"])
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    tenant = Tenant.model_validate(json.loads(args.tenant))
    with Ledger.open(args.ledger) as ledger:
        api = SlowWorkloads(load_api_client(args.kubeconfig), args.delay)
        enforcer = Enforcer(ledger, api, GpuResources(), concurrency=1)
        state, problems = asyncio.run(enforce(enforcer, ledger, tenant, args.action))
    print(json.dumps({"state": state, "problems": problems}))
    print("done", flush=True)


if __name__ == "__main__":
    main()
