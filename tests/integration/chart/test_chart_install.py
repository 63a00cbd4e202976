"""`helm install`, `helm upgrade` and `helm uninstall` of the chart on the real local
kube-apiserver (with controller-manager, scheduler and kwok nodes): the operator in a
namespace that enforces Pod Security `restricted`, the exporter in a namespace of its own
(`privileged`, examples/values-exporter-own-namespace.yaml), with PostgreSQL values, and
with monitoring on against the Prometheus Operator's published CRDs.

Every object is accepted, the ReplicaSet's pods pass `restricted` (the same namespace
refuses the exporter's pod: the label is enforced), values.schema.json refuses a typo and
changes nothing, an upgrade keeps who holds the Lease and the issued certificate, and
uninstall leaves nothing of kubemeter but the CRDs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.chart import CHART, helm_on, prometheus_operator_crds
from support.cluster import KubeCluster
from support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

RESTRICTED = "km-restricted"
EXPORTER_NS = "km-exporter"
INSTANCE = "app.kubernetes.io/instance"


def namespace(k: KubeCluster, name: str, level: str) -> None:
    k.kubectl("create", "namespace", name)
    k.kubectl_ok(
        "label", "--overwrite", "namespace", name,
        f"pod-security.kubernetes.io/enforce={level}", f"pod-security.kubernetes.io/warn={level}",
    )  # fmt: skip


def manifest(k: KubeCluster, release: str, ns: str) -> list[dict[str, Any]]:
    out = helm_on(k, "get", "manifest", release, "-n", ns).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def assert_every_object_exists(k: KubeCluster, docs: list[dict[str, Any]], ns: str) -> None:
    for doc in docs:
        meta = doc["metadata"]
        args = [
            "get",
            f"{doc['kind']}.{doc['apiVersion'].split('/')[0]}"
            if "/" in doc["apiVersion"]
            else doc["kind"],
            meta["name"],
            "-o",
            "name",
        ]
        if doc["kind"] not in {
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingWebhookConfiguration",
        }:
            args += ["-n", meta.get("namespace", ns)]
        k.kubectl_ok(*args)


def kubemeter_leftovers(k: KubeCluster, releases: set[str]) -> list[str]:
    """Every object of any listable kind labelled with one of `releases` (CRDs aside)."""
    kinds = k.kubectl_ok("api-resources", "--verbs=list", "-o", "name").split()
    kinds = [kind for kind in kinds if kind not in {"events", "events.events.k8s.io"}]
    selector = f"{INSTANCE} in ({','.join(sorted(releases))})"
    out = k.kubectl_ok("get", ",".join(kinds), "-A", "-l", selector, "-o", "name")
    return [line for line in out.split() if line]


def operator_pods(k: KubeCluster, release: str, ns: str) -> list[dict[str, Any]]:
    pods = k.get_json(
        "pods", "-n", ns, "-l", f"{INSTANCE}={release},app.kubernetes.io/component=operator"
    )
    return list(pods["items"])


@pytest.fixture(scope="module")
def installed(kube_cluster: KubeCluster) -> Iterator[dict[str, Any]]:
    """The exporter release (own namespace) and the operator release (restricted)."""
    k = kube_cluster
    namespace(k, EXPORTER_NS, "privileged")
    namespace(k, RESTRICTED, "restricted")
    exporter = helm_on(
        k, "install", "kmx", str(CHART), "-n", EXPORTER_NS,
        "-f", str(REPO_ROOT / "examples" / "values-exporter-own-namespace.yaml"),
    )  # fmt: skip
    operator = helm_on(
        k, "install", "km", str(CHART), "-n", RESTRICTED,
        "--set", "exporter.enabled=false",
        "--set", f"exporter.external.namespace={EXPORTER_NS}",
        "--set", "exporter.external.release=kmx",
    )  # fmt: skip
    try:
        yield {"exporter": exporter, "operator": operator}
    finally:
        helm_on(k, "uninstall", "km", "-n", RESTRICTED, check=False)
        helm_on(k, "uninstall", "kmx", "-n", EXPORTER_NS, check=False)
        for ns in (RESTRICTED, EXPORTER_NS):
            k.kubectl("delete", "namespace", ns, "--wait=false")


def test_install_is_accepted_and_the_operator_passes_pod_security_restricted(
    kube_cluster: KubeCluster, installed: dict[str, Any]
) -> None:
    k = kube_cluster
    for what, res in installed.items():
        assert "PodSecurity" not in res.stderr, f"{what}: {res.stderr}"
    # NOTES.txt: the next steps
    notes = installed["operator"].stdout
    assert "kubectl get tenants" in notes
    assert "kubectl apply -f examples/priceplan-gpu-standard.yaml" in notes
    assert f"km-events.{RESTRICTED}.svc" in notes
    assert "The operator is disabled in this release" in installed["exporter"].stdout

    docs = manifest(k, "km", RESTRICTED)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PodDisruptionBudget", "Lease", "Secret", "NetworkPolicy",
            "ValidatingWebhookConfiguration", "PersistentVolumeClaim"} <= kinds  # fmt: skip
    assert "DaemonSet" not in kinds
    assert_every_object_exists(k, docs, RESTRICTED)
    assert_every_object_exists(k, manifest(k, "kmx", EXPORTER_NS), EXPORTER_NS)

    # The ReplicaSet created both replicas: Pod Security admitted them.
    pods = k.wait_for("2 operator pods", lambda: len(operator_pods(k, "km", RESTRICTED)) == 2)
    assert pods
    events = k.get_json("events", "-n", RESTRICTED)["items"]
    assert not [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    exporters = k.wait_for(
        "exporter pods on the GPU nodes",
        lambda: k.get_json("pods", "-n", EXPORTER_NS, "-l", f"{INSTANCE}=kmx")["items"],
    )
    assert {p["spec"]["nodeName"] for p in exporters if p["spec"].get("nodeName")}

    # The same namespace refuses the exporter's pod: `restricted` is really enforced.
    (ds,) = [d for d in manifest(k, "kmx", EXPORTER_NS) if d["kind"] == "DaemonSet"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "exporter-probe", "namespace": RESTRICTED},
           "spec": {**ds["spec"]["template"]["spec"], "serviceAccountName": "default"}}  # fmt: skip
    res = k.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    assert res.returncode != 0
    assert 'violates PodSecurity "restricted' in res.stderr
    assert "hostPath" in res.stderr

    # The operator is pointed at the other release's exporter pods.
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBEMETER_EXPORTER_NAMESPACE"] == EXPORTER_NS
    assert env["KUBEMETER_EXPORTER_SELECTOR"].startswith(f"{INSTANCE}=kmx,")


def test_a_typo_or_a_bad_value_is_refused_by_the_schema_and_changes_nothing(
    kube_cluster: KubeCluster, installed: dict[str, Any]
) -> None:
    k = kube_cluster
    before = json.loads(helm_on(k, "status", "km", "-n", RESTRICTED, "-o", "json").stdout)
    for bad, named in [
        ("operator.intervall=30", "intervall"),
        ("admission.failurePolicy=Sometimes", "/admission/failurePolicy"),
        ("operator.replicas=zero", "/operator/replicas"),
        ("operator.enforcement.keda=maybe", "/operator/enforcement/keda"),
    ]:
        res = helm_on(k, "upgrade", "km", str(CHART), "-n", RESTRICTED, "--reuse-values",
                      "--set", bad, check=False)  # fmt: skip
        assert res.returncode != 0, bad
        assert "schema" in res.stderr, res.stderr
        assert named in res.stderr, res.stderr
    after = json.loads(helm_on(k, "status", "km", "-n", RESTRICTED, "-o", "json").stdout)
    assert after["version"] == before["version"]


def test_upgrade_changes_values_and_keeps_the_lease_holder_and_the_certificate(
    kube_cluster: KubeCluster, installed: dict[str, Any]
) -> None:
    k = kube_cluster
    # What a running operator would have written: a holder, an issued certificate.
    k.kubectl_ok("patch", "lease", "kubemeter-operator", "-n", RESTRICTED, "--type=merge",
                 "-p", json.dumps({"spec": {"holderIdentity": "km-operator-abc",
                                            "leaseDurationSeconds": 12}}))  # fmt: skip
    issued = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...").decode()
    k.kubectl_ok("patch", "secret", "km-admission-cert", "-n", RESTRICTED, "--type=merge",
                 "-p", json.dumps({"data": {"tls.crt": issued}}))  # fmt: skip

    helm_on(
        k, "upgrade", "km", str(CHART), "-n", RESTRICTED, "--reuse-values",
        "--set", "operator.interval=30", "--set", "operator.replicas=3",
        "--set", "admission.failurePolicy=Fail",
    )  # fmt: skip
    dep = k.get_json("deployment", "km-operator", "-n", RESTRICTED)
    assert dep["spec"]["replicas"] == 3
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBEMETER_INTERVAL_S"] == "30"
    hook = k.get_json("validatingwebhookconfiguration", "km-admission")
    assert {w["failurePolicy"] for w in hook["webhooks"]} == {"Fail"}
    # The rollout's new ReplicaSet (its pods wait for the PVC: no provisioner here).
    k.wait_for(
        "the new ReplicaSet",
        lambda: [rs for rs in k.get_json("rs", "-n", RESTRICTED, "-l", f"{INSTANCE}=km")["items"]
                 if any(e.get("value") == "30" and e["name"] == "KUBEMETER_INTERVAL_S"
                        for e in rs["spec"]["template"]["spec"]["containers"][0]["env"])],
    )  # fmt: skip

    lease = k.get_json("lease", "kubemeter-operator", "-n", RESTRICTED)
    assert lease["spec"]["holderIdentity"] == "km-operator-abc"
    secret = k.get_json("secret", "km-admission-cert", "-n", RESTRICTED)
    assert secret["data"]["tls.crt"] == issued


def test_postgresql_values_take_the_url_from_a_secret_and_need_no_volume(
    kube_cluster: KubeCluster,
) -> None:
    k = kube_cluster
    ns = "km-pg"
    namespace(k, ns, "restricted")
    try:
        k.kubectl_ok(
            "create",
            "secret",
            "generic",
            "kubemeter-db",
            "-n",
            ns,
            "--from-literal=url=postgresql+psycopg://kubemeter:pw@pg.db.svc/kubemeter",
        )
        res = helm_on(
            k, "install", "kmpg", str(CHART), "-n", ns, "--set", "exporter.enabled=false",
            "--set", "operator.dbSecret.name=kubemeter-db", "--set", "operator.dbSecret.key=url",
            "--set", "operator.persistence.enabled=false",
        )  # fmt: skip
        assert "PodSecurity" not in res.stderr, res.stderr
        assert "SQLite" not in res.stdout  # NOTES: no SQLite advice
        docs = manifest(k, "kmpg", ns)
        assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
        assert_every_object_exists(k, docs, ns)
        dep = k.get_json("deployment", "kmpg-operator", "-n", ns)
        spec = dep["spec"]["template"]["spec"]
        (db,) = [e for e in spec["containers"][0]["env"] if e["name"] == "KUBEMETER_DB"]
        assert db["valueFrom"]["secretKeyRef"] == {"name": "kubemeter-db", "key": "url"}
        assert "podAntiAffinity" in spec["affinity"]  # replicas may spread over nodes
        k.wait_for("2 operator pods", lambda: len(operator_pods(k, "kmpg", ns)) == 2)
        helm_on(k, "uninstall", "kmpg", "-n", ns)
        assert kubemeter_leftovers(k, {"kmpg"}) == []
    finally:
        helm_on(k, "uninstall", "kmpg", "-n", ns, check=False)
        k.kubectl("delete", "namespace", ns, "--wait=false")


def test_monitoring_objects_are_accepted_by_the_prometheus_operator_crds(
    kube_cluster: KubeCluster,
) -> None:
    k = kube_cluster
    for crd in prometheus_operator_crds():
        k.kubectl_ok("apply", "--server-side", "-f", str(crd))
    k.kubectl_ok("wait", "--for=condition=Established", "--timeout=60s",
                 "crd/servicemonitors.monitoring.coreos.com",
                 "crd/podmonitors.monitoring.coreos.com",
                 "crd/prometheusrules.monitoring.coreos.com")  # fmt: skip
    ns = "km-monitoring"
    namespace(k, ns, "privileged")
    try:
        helm_on(
            k, "install", "kmmon", str(CHART), "-n", ns,
            "--set", "exporter.podMonitor.enabled=true",
            "--set", "monitoring.serviceMonitor.enabled=true",
            "--set", "monitoring.prometheusRule.enabled=true",
            "--set", "monitoring.dashboard.enabled=true",
        )  # fmt: skip
        docs = manifest(k, "kmmon", ns)
        kinds = {d["kind"] for d in docs}
        assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
        assert_every_object_exists(k, docs, ns)
        helm_on(k, "uninstall", "kmmon", "-n", ns)
        assert kubemeter_leftovers(k, {"kmmon"}) == []
    finally:
        helm_on(k, "uninstall", "kmmon", "-n", ns, check=False)
        k.kubectl("delete", "namespace", ns, "--wait=false")


def test_uninstall_leaves_nothing_but_the_crds(
    kube_cluster: KubeCluster, installed: dict[str, Any]
) -> None:
    """Last in this module: uninstalls both releases of the fixture."""
    k = kube_cluster
    assert kubemeter_leftovers(k, {"km", "kmx"})  # there is something to remove
    helm_on(k, "uninstall", "km", "-n", RESTRICTED)
    helm_on(k, "uninstall", "kmx", "-n", EXPORTER_NS)
    k.wait_for("no kubemeter objects", lambda: kubemeter_leftovers(k, {"km", "kmx"}) == [])
    assert k.kubectl("get", "lease", "kubemeter-operator", "-n", RESTRICTED).returncode != 0
    assert k.kubectl("get", "secret", "km-admission-cert", "-n", RESTRICTED).returncode != 0
    crds = k.kubectl_ok("get", "crd", "-o", "name")
    assert "tenants.kubemeter.dev" in crds
    assert "priceplans.kubemeter.dev" in crds
