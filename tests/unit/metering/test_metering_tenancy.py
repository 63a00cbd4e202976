from __future__ import annotations

from typing import Any

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.usage.tenancy import UNASSIGNED, NamespaceConflict, TenancyMap


def tenant(name: str, namespaces: list[str], created: str | None = None, **spec: Any) -> Tenant:
    meta: dict[str, Any] = {"name": name}
    if created:
        meta["creationTimestamp"] = created
    return Tenant.model_validate(
        {
            "metadata": meta,
            "spec": {"pricePlanRef": {"name": "p"}, "namespaces": namespaces, **spec},
        }
    )


def test_namespace_owner_gets_its_pods() -> None:
    m = TenancyMap.build([tenant("acme", ["a1", "a2"]), tenant("beta", ["b"])])
    assert m.assign("a2", {}).tenant == "acme"
    assert m.assign("b", None).tenant == "beta"
    assert not m.conflicts
    assert m.namespaces_of("acme") == ["a1", "a2"]


def test_unowned_namespace_and_podless_usage_are_unassigned() -> None:
    m = TenancyMap.build([tenant("acme", ["a"])])
    a = m.assign("other", {"x": "y"})
    assert a.tenant == UNASSIGNED
    assert a.unassigned
    assert "other" in a.reason
    assert m.assign("", None).tenant == UNASSIGNED
    assert m.assign(None, None).tenant == UNASSIGNED


def test_pod_selector_narrows() -> None:
    m = TenancyMap.build(
        [
            tenant(
                "acme",
                ["shared"],
                podSelector={
                    "matchLabels": {"team": "acme"},
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}],
                },
            )
        ]
    )
    assert m.assign("shared", {"team": "acme"}).tenant == "acme"
    assert m.assign("shared", {"team": "acme", "tier": "prod"}).tenant == "acme"
    assert m.assign("shared", {"team": "acme", "tier": "dev"}).tenant == UNASSIGNED
    assert m.assign("shared", {"team": "beta"}).tenant == UNASSIGNED
    unknown = m.assign("shared", None)
    assert unknown.tenant == UNASSIGNED
    assert "unknown" in unknown.reason


def test_empty_selector_selects_everything() -> None:
    m = TenancyMap.build([tenant("acme", ["a"], podSelector={})])
    assert m.assign("a", None).tenant == "acme"


def test_later_tenant_loses_conflicting_namespace() -> None:
    early = tenant("zeta", ["shared", "z"], "2026-01-01T00:00:00Z")
    late = tenant("alpha", ["shared", "a"], "2026-02-01T00:00:00Z")
    m = TenancyMap.build([late, early])
    assert m.conflicts == (NamespaceConflict("alpha", "shared", "zeta"),)
    assert m.conflicts_of("alpha")[0].owner == "zeta"
    assert "zeta" in m.conflicts_of("alpha")[0].message
    assert m.conflicts_of("zeta") == []
    assert m.assign("shared", {}).tenant == "zeta"
    assert m.assign("a", {}).tenant == "alpha"
    assert m.namespaces_of("alpha") == ["a"]


def test_conflict_usage_excluded_by_owner_selector_is_unassigned() -> None:
    early = tenant("one", ["s"], "2026-01-01T00:00:00Z", podSelector={"matchLabels": {"t": "1"}})
    late = tenant("two", ["s"], "2026-01-02T00:00:00Z")
    m = TenancyMap.build([early, late])
    assert m.assign("s", {"t": "1"}).tenant == "one"
    assert m.assign("s", {"t": "2"}).tenant == UNASSIGNED


def test_same_creation_time_orders_by_name() -> None:
    ts = "2026-01-01T00:00:00Z"
    m = TenancyMap.build([tenant("bbb", ["s"], ts), tenant("aaa", ["s"], ts)])
    assert m.assign("s", {}).tenant == "aaa"
    assert m.conflicts[0].tenant == "bbb"


def test_missing_creation_time_counts_as_oldest() -> None:
    m = TenancyMap.build([tenant("new", ["s"], "2026-01-01T00:00:00Z"), tenant("x", ["s"])])
    assert m.assign("s", {}).tenant == "x"
