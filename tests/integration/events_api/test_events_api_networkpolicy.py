"""The chart's protection of the events API: a NetworkPolicy that admits the events port only
from the configured namespaces and the metrics port only from Prometheus' namespaces, and
the API's limits passed to the operator as KUBEMETER_EVENTS_* variables; every rendered
object accepted by a real kube-apiserver (server-side dry run)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from support import chart
from support.cluster import KubeCluster

pytestmark = pytest.mark.integration


def render(*sets: str) -> list[dict[str, Any]]:
    return chart.render("km", "kubemeter", *sets)


def network_policy(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The operator's policy (the events API and metrics ports); the admission webhook's
    port has a policy of its own (km-admission, tests/integration/chart)."""
    found = [
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "km-operator"
    ]
    assert len(found) <= 1
    return found[0] if found else None


def sources(rule: dict[str, Any]) -> list[str | None]:
    """The namespace names a rule admits (None: any namespace)."""
    return [
        (peer["namespaceSelector"].get("matchLabels") or {}).get("kubernetes.io/metadata.name")
        for peer in rule["from"]
    ]


def rule_for(policy: dict[str, Any], port: str) -> dict[str, Any]:
    (rule,) = [
        r for r in policy["spec"]["ingress"] if r["ports"] == [{"protocol": "TCP", "port": port}]
    ]
    return rule


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_network_policy_admits_the_events_port_only_from_the_named_namespaces() -> None:
    docs = render(
        "operator.eventsApi.networkPolicy.fromNamespaces={ai-gateway,apps}",
        "operator.eventsApi.networkPolicy.prometheusNamespaces={monitoring,obs}",
    )
    policy = network_policy(docs)
    assert policy is not None
    assert policy["metadata"]["namespace"] == "kubemeter"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "km",
        "app.kubernetes.io/component": "operator",
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert len(policy["spec"]["ingress"]) == 2  # nothing else is admitted
    assert sources(rule_for(policy, "events-api")) == ["ai-gateway", "apps"]
    assert sources(rule_for(policy, "metrics")) == ["monitoring", "obs"]


def test_network_policy_defaults_and_switches() -> None:
    policy = network_policy(render())
    assert policy is not None
    assert sources(rule_for(policy, "events-api")) == [None]  # in-cluster only, by default
    assert sources(rule_for(policy, "metrics")) == ["monitoring"]
    assert network_policy(render("operator.eventsApi.networkPolicy.enabled=false")) is None
    without_api = network_policy(render("operator.eventsApi.enabled=false"))
    assert without_api is not None
    assert [r["ports"][0]["port"] for r in without_api["spec"]["ingress"]] == ["metrics"]


def test_events_api_limits_reach_the_operator_as_environment() -> None:
    env = operator_env(render())
    assert env["KUBEMETER_EVENTS_MAX_INFLIGHT"] == "256"
    assert env["KUBEMETER_EVENTS_HEADER_TIMEOUT_S"] == "10"
    assert env["KUBEMETER_EVENTS_BODY_TIMEOUT_S"] == "30"
    assert env["KUBEMETER_EVENTS_AUTH_FAILURES_PER_MINUTE"] == "20"
    assert "KUBEMETER_EVENTS_TLS_SECRET" not in env
    env = operator_env(
        render("operator.eventsApi.tlsSecret=events-tls", "operator.eventsApi.maxInflight=64")
    )
    assert env["KUBEMETER_EVENTS_TLS_SECRET"] == "kubemeter/events-tls"  # release namespace
    assert env["KUBEMETER_EVENTS_MAX_INFLIGHT"] == "64"
    env = operator_env(render("operator.eventsApi.tlsSecret=certs/events-tls"))
    assert env["KUBEMETER_EVENTS_TLS_SECRET"] == "certs/events-tls"


def test_the_network_policy_is_accepted_by_the_api_server(kube_cluster: KubeCluster) -> None:
    kube_cluster.kubectl("create", "namespace", "kubemeter-np")
    docs = [
        d
        for d in render("operator.eventsApi.networkPolicy.fromNamespaces={ai-gateway}")
        if d["kind"] == "NetworkPolicy"
    ]
    for doc in docs:
        doc["metadata"]["namespace"] = "kubemeter-np"
    out = kube_cluster.kubectl_ok(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs)
    )
    assert "networkpolicy.networking.k8s.io/km-operator created (server dry run)" in out
