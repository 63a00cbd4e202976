"""The chart's admission webhook: a ValidatingWebhookConfiguration named as the operator is
told, scoped to tenant namespaces, failurePolicy from values (Ignore by default), served by
a Service on the operator pods, and RBAC restricted to its own configuration and Secret."""

from __future__ import annotations

from typing import Any

import pytest

from support.chart import CHART, helm, one, render

pytestmark = pytest.mark.integration


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(docs, "Deployment", "km-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_webhook_configuration_is_the_one_the_operator_patches_scoped_to_tenants() -> None:
    docs = render()
    cfg = one(docs, "ValidatingWebhookConfiguration", "km-admission")
    (hook,) = cfg["webhooks"]
    assert env(docs)["KUBEMETER_ADMISSION_WEBHOOK_NAME"] == "km-admission"
    assert "caBundle" not in hook["clientConfig"]  # the operator sets it
    assert hook["clientConfig"]["service"] == {
        "name": "km-admission",
        "namespace": "kubemeter",
        "path": "/validate",
        "port": 443,
    }
    assert hook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubemeter.dev/tenant", "operator": "Exists"}]
    }
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] <= 10
    rules = {
        (r["apiGroups"][0], res): r["operations"] for r in hook["rules"] for res in r["resources"]
    }
    assert rules == {
        ("", "pods"): ["CREATE"],
        ("apps", "deployments"): ["CREATE", "UPDATE"],
        ("apps", "statefulsets"): ["CREATE", "UPDATE"],
        ("apps", "deployments/scale"): ["UPDATE"],
        ("apps", "statefulsets/scale"): ["UPDATE"],
        ("batch", "jobs"): ["CREATE", "UPDATE"],
        ("batch", "cronjobs"): ["CREATE", "UPDATE"],
    }  # fmt: skip


def test_failure_policy_is_a_value_and_nothing_else_is_accepted() -> None:
    cfg = one(render("km", "kubemeter", "admission.failurePolicy=Fail"),
              "ValidatingWebhookConfiguration", "km-admission")  # fmt: skip
    assert cfg["webhooks"][0]["failurePolicy"] == "Fail"
    with pytest.raises(AssertionError, match=r"/admission/failurePolicy.*'Ignore', 'Fail'"):
        render("km", "kubemeter", "admission.failurePolicy=Maybe")


def test_the_operator_serves_the_webhook_behind_its_service() -> None:
    docs = render()
    values = env(docs)
    assert values["KUBEMETER_ADMISSION_LISTEN"] == "0.0.0.0:8443"
    assert values["KUBEMETER_ADMISSION_CERT_SECRET"] == "kubemeter/km-admission-cert"
    assert values["KUBEMETER_ADMISSION_HOSTS"] == "km-admission.kubemeter.svc"
    deployment = one(docs, "Deployment", "km-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "admission", "containerPort": 8443} in container["ports"]
    service = one(docs, "Service", "km-admission")
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "admission"}]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    policy = one(docs, "NetworkPolicy", "km-admission")
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "admission"}]}]


def test_admission_rbac_is_its_own_configuration_and_secret_only() -> None:
    docs = render()
    cluster_role = one(docs, "ClusterRole", "km-admission")
    assert cluster_role["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingwebhookconfigurations"], "resourceNames": ["km-admission"],
         "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["namespaces"],
         "verbs": ["get", "list", "watch", "patch"]},
    ]  # fmt: skip
    role = one(docs, "Role", "km-admission-cert")
    assert role["metadata"]["namespace"] == "kubemeter"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["km-admission-cert"],
         "verbs": ["get", "update"]},
    ]  # fmt: skip
    # the chart creates the Secret (empty, Opaque): no create verb is needed
    secret = one(docs, "Secret", "km-admission-cert")
    assert (secret["type"], secret.get("data")) == ("Opaque", None)
    bindings = (("ClusterRoleBinding", "km-admission"), ("RoleBinding", "km-admission-cert"))
    for kind, name in bindings:
        binding = one(docs, kind, name)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "km-operator", "namespace": "kubemeter"}
        ]


def test_admission_can_be_switched_off() -> None:
    docs = render("km", "kubemeter", "admission.enabled=false")
    assert not [d for d in docs if "admission" in d["metadata"]["name"]]
    assert not [k for k in env(docs) if k.startswith("KUBEMETER_ADMISSION")]
    helm("lint", str(CHART), "--strict", "--set", "admission.enabled=false")
