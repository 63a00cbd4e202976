"""OperatorService's watch-event intake: Tenant status writes (every cycle) do not make
the events API re-read every token Secret; a new tenant or a changed Secret reference does."""

from __future__ import annotations

import copy
from typing import Any

from kubemeter_operator.config import OperatorConfig
from kubemeter_operator.controller.service import OperatorService


class CountingTokenStore:
    def __init__(self) -> None:
        self.changes = 0

    def tenants_changed(self) -> None:
        self.changes += 1


def body(secret: str = "acme-token", total: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {
            "pricePlanRef": {"name": "std"},
            "namespaces": ["acme"],
            "apiTokenSecretRef": {"namespace": "kubemeter", "name": secret},
        },
    }
    if total is not None:
        obj["status"] = {"total": total}
    return obj


def test_token_secrets_are_reread_only_when_references_change() -> None:
    service = OperatorService(OperatorConfig(prometheus_url="http://p:9090"))
    store = CountingTokenStore()
    service.token_store = store  # type: ignore[assignment]

    service.tenant_event("ADDED", body())
    assert store.changes == 1
    for total in ("1.00", "2.00", "3.00"):  # status patches each cycle
        service.tenant_event("MODIFIED", body(total=total))
    assert store.changes == 1
    assert service.tenants["acme"].status is not None
    assert service.tenants["acme"].status.total is not None

    service.tenant_event("MODIFIED", body(secret="acme-token-v2"))
    assert store.changes == 2
    service.tenant_event("DELETED", copy.deepcopy(body(secret="acme-token-v2")))
    assert store.changes == 3
    assert "acme" not in service.tenants
