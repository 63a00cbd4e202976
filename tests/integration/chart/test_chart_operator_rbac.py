"""The operator's RBAC for budget enforcement, applied to a real kube-apiserver and checked
with ``kubectl auth can-i``: it may stop GPU workloads through the scale subresource and
`spec.suspend`, and nothing more (never edit a Deployment's pod template, never delete a
workload, pods only when the chart opts in, ScaledObjects only while KEDA is on)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import yaml

from support.chart import render
from support.cluster import KubeCluster

pytestmark = pytest.mark.integration

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount")


def can_i(k: KubeCluster, user: str, verb: str, resource: str, *scope: str) -> bool:
    """`kubectl auth can-i`; for API groups the server does not serve (KEDA's, when it is
    not installed, where kubectl cannot resolve the name) a SubjectAccessReview."""
    path, _, sub = resource.partition("/")
    name, _, group = path.partition(".")
    if group == "keda.sh":
        attributes = {"verb": verb, "group": group, "resource": name, "subresource": sub}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                     "resourceAttributes": attributes},
        }  # fmt: skip
        out = k.kubectl_ok("create", "-o", "json", "-f", "-", input=json.dumps(review))
        return bool(json.loads(out)["status"].get("allowed"))
    extra = (f"--subresource={sub}",) if sub else ()
    res = k.kubectl("auth", "can-i", verb, path, *extra, *scope, f"--as={user}")
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), (res.stdout, res.stderr)
    return answer == "yes"


@pytest.fixture
def installed(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The chart's RBAC (with the test's --set values) applied; yields the operator user."""
    sets: tuple[str, ...] = getattr(request, "param", ())
    release, ns = f"kmr{secrets.token_hex(2)}", f"km-rbac-{secrets.token_hex(2)}"
    rbac = [d for d in render(release, ns, *sets) if d["kind"] in RBAC_KINDS]
    manifest = yaml.safe_dump_all(rbac)
    kube_cluster.kubectl("create", "namespace", ns)
    kube_cluster.kubectl_ok("apply", "-f", "-", input=manifest)
    try:
        yield f"system:serviceaccount:{ns}:{release}-operator"
    finally:
        kube_cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest)
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_the_operator_may_stop_gpu_workloads_and_nothing_more(
    kube_cluster: KubeCluster, installed: str
) -> None:
    k, op = kube_cluster, installed
    everywhere = "--all-namespaces"
    for verb, resource in [
        ("patch", "deployments.apps/scale"),
        ("patch", "statefulsets.apps/scale"),
        ("list", "deployments.apps"),
        ("patch", "jobs.batch"),
        ("patch", "cronjobs.batch"),
        ("list", "horizontalpodautoscalers.autoscaling"),
        ("patch", "scaledobjects.keda.sh"),  # keda: auto (the default)
    ]:
        assert can_i(k, op, verb, resource, everywhere), (verb, resource)
    for verb, resource in [
        ("patch", "deployments.apps"),  # the pod template: never
        ("update", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("patch", "statefulsets.apps"),
        ("delete", "jobs.batch"),
        ("delete", "pods"),  # only with enforcement.deleteBareGpuPods
        ("create", "pods"),
        ("patch", "horizontalpodautoscalers.autoscaling"),
        ("delete", "scaledobjects.keda.sh"),
        ("create", "tenants.kubemeter.dev"),
        ("patch", "tenants.kubemeter.dev"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("get", "secrets"),  # only in the token namespaces
    ]:
        assert not can_i(k, op, verb, resource, everywhere), (verb, resource)
    # Its own namespace: the chart creates the Lease and the certificate Secret, so the
    # operator creates neither (create cannot be restricted by name).
    own = op.split(":")[2]
    for verb, resource in [("create", "secrets"), ("create", "leases.coordination.k8s.io")]:
        assert not can_i(k, op, verb, resource, "-n", own), (verb, resource)


@pytest.mark.parametrize(
    "installed",
    [("operator.enforcement.keda=off", "operator.enforcement.deleteBareGpuPods=true")],
    indirect=True,
)
def test_keda_off_grants_no_scaledobjects_and_bare_pod_deletion_is_opt_in(
    kube_cluster: KubeCluster, installed: str
) -> None:
    k, op = kube_cluster, installed
    assert not can_i(k, op, "patch", "scaledobjects.keda.sh", "--all-namespaces")
    assert not can_i(k, op, "list", "scaledobjects.keda.sh", "--all-namespaces")
    assert can_i(k, op, "delete", "pods", "--all-namespaces")
    assert can_i(k, op, "patch", "deployments.apps/scale", "--all-namespaces")
