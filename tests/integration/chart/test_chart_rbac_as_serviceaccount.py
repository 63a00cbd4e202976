"""The chart's RBAC, proven by running the operator under it: `helm install` on the real
kube-apiserver, a TokenRequest for the chart's operator ServiceAccount, and the real
`kubemeter operator` process on this machine with a kubeconfig holding only that token.

A full scenario runs under it: metering from a real Prometheus scraping the simulated
exporter, billing, status, a signed webhook (its key read from a Secret), the Lease, the
admission certificate and caBundle, the tenant-namespace label, and budget enforcement
(a GPU Deployment to 0 and a GPU Job suspended, then both restored). The API server
never answers 403 (the operator's log holds no Forbidden). A `kubectl auth can-i` matrix
with the same token shows what it cannot do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import CHART, helm_on
from support.cluster import KubeCluster
from support.paths import REPO_ROOT
from support.prometheus import PrometheusServer, free_port
from support.webhooks import Receiver, readme_verify

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SCENARIO = REPO_ROOT / "tests" / "integration" / "e2e" / "scenario.yaml"
NS = "km-sa"
RELEASE = "kmsa"
TENANT_NS = "sa-acme"
OTHER_NS = "sa-globex"
SA = f"{RELEASE}-operator"
GPU = {"limits": {"nvidia.com/gpu": "1"}}


def sa_kubeconfig(k: KubeCluster, path: Path) -> Path:
    """A kubeconfig for the chart's operator ServiceAccount: a TokenRequest, not admin."""
    token = k.kubectl_ok("create", "token", SA, "-n", NS, "--duration=2h").strip()
    admin = yaml.safe_load(Path(k.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster["cluster"]}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": SA}}],
        "current-context": "sa",
    }))  # fmt: skip
    return path


def workload(kind: str, name: str, resources: dict[str, Any] | None) -> dict[str, Any]:
    container = {"name": "main", "image": "registry.example/gpu:1", "resources": resources or {}}
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], "restartPolicy":
                         "Never" if kind == "Job" else "Always"}}  # fmt: skip
    if kind == "Job":
        # Pending (kwok completes a Job's running pods at once): it stays active
        template["spec"]["nodeSelector"] = {"kubemeter.dev/test": "nowhere"}
        spec: dict[str, Any] = {"template": template, "parallelism": 1, "completions": 1}
        api = "batch/v1"
    else:
        spec = {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template}
        api = "apps/v1"
    meta = {"name": name, "namespace": TENANT_NS}
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def can_i(kubeconfig: Path, kubectl: str, verb: str, resource: str, *scope: str) -> bool:
    res = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource, *scope],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), (res.stdout, res.stderr)
    return answer == "yes"


@pytest.fixture(scope="module")
def world(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    k = kube_cluster
    tmp_path = tmp_path_factory.mktemp("rbac-as-sa")
    for ns in (NS, TENANT_NS, OTHER_NS):
        k.kubectl("create", "namespace", ns)
    helm_on(
        k, "install", RELEASE, str(CHART), "-n", NS, "--set", "exporter.enabled=false",
        "--set", "operator.replicas=1",
    )  # fmt: skip
    receiver = Receiver(readme_verify())
    kubeconfig = sa_kubeconfig(k, tmp_path / "sa.kubeconfig")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    prom: PrometheusServer | None = None
    try:
        k.kubectl_ok("create", "secret", "generic", "acme-webhook", "-n", NS,
                     "--from-literal=key=whsec-sa-acme-0123456789abcdef")  # fmt: skip
        k.apply({"apiVersion": "kubemeter.dev/v1alpha1", "kind": "PricePlan",
                 "metadata": {"name": "sa-usd"},
                 "spec": {"currency": "USD", "meters": [{"name": "gpu", "kind": "gpuTime",
                          "unit": "gpu-hour",
                          "pricing": {"model": "flat", "unitPrice": "360"}}]}})  # fmt: skip
        url = receiver.endpoint("acme")
        k.apply({"apiVersion": "kubemeter.dev/v1alpha1", "kind": "Tenant",
                 "metadata": {"name": "sa-acme"},
                 "spec": {"pricePlanRef": {"name": "sa-usd"}, "namespaces": [TENANT_NS],
                          "budget": {"limit": "1", "enforcement": "scaleDown",
                                     "alertThresholds": [50]},
                          "notification": {"webhookUrl": url, "secretRef":
                                           {"name": "acme-webhook", "namespace": NS,
                                            "key": "key"}}}})  # fmt: skip
        k.apply(workload("Deployment", "trainer", GPU))
        k.apply(workload("Job", "batch", GPU))
        k.apply(workload("Deployment", "web", None))
        text = SCENARIO.read_text()
        for old, new in (("acme-prod", TENANT_NS), ("globex-ml", OTHER_NS), ("orphan", OTHER_NS)):
            text = text.replace(f"namespace: {old}", f"namespace: {new}")
            text = text.replace(f"pod: {old}/", f"pod: {new}/")
        scenario = tmp_path / "scenario.yaml"
        scenario.write_text(text)
        for ns, pod in ((TENANT_NS, "train-0"), (OTHER_NS, "infer-0"), (OTHER_NS, "stray-0")):
            k.apply({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": pod, "namespace": ns},
                     "spec": {"nodeName": "gpu-node-0", "containers": [{
                         "name": "main", "image": "registry.example/gpu:1",
                         "resources": GPU}]}})  # fmt: skip

        exporter_port, admission_port = free_port(), free_port()
        # No POD_NAMESPACE: the simulated exporter is no pod, so GPU series are checked by
        # scrape job only (as on a machine outside the cluster).
        env = {k_: v for k_, v in os.environ.items() if k_ not in {"KUBECONFIG", "POD_NAMESPACE"}}
        exporter_log = tmp_path / "exporter.log"
        logs.append(exporter_log)
        with open(exporter_log, "ab") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "kubemeter-exporter"), "--simulate", str(scenario), "--speed", "1",
                 "--interval", "20ms", "--listen", f"127.0.0.1:{exporter_port}",
                 "--node-name", "gpu-node-0", "--no-kube", "--log-level", "WARNING"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            ))  # fmt: skip
        prom = PrometheusServer([f"127.0.0.1:{exporter_port}"], data_dir=tmp_path / "prom")
        prom.start()
        operator_log = tmp_path / "operator.log"
        logs.append(operator_log)
        with open(operator_log, "ab") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "kubemeter"), "operator", "--kubeconfig", str(kubeconfig),
                 "--prometheus-url", prom.url, "--db", f"sqlite:///{tmp_path / 'ledger.db'}",
                 "--interval", "1", "--lag", "3",
                 "--events-listen", f"127.0.0.1:{free_port()}",
                 "--metrics-port", str(free_port()),
                 "--lease-namespace", NS, "--lease-name", "kubemeter-operator",
                 "--identity", "sa-operator",
                 "--admission-listen", f"127.0.0.1:{admission_port}",
                 "--admission-webhook-name", f"{RELEASE}-admission",
                 "--admission-cert-secret", f"{NS}/{RELEASE}-admission-cert",
                 "--admission-hosts", f"{RELEASE}-admission.{NS}.svc",
                 "--log-level", "INFO"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            ))  # fmt: skip
        yield {"k": k, "kubeconfig": kubeconfig, "receiver": receiver, "log": operator_log}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            if log.exists():
                sys.stderr.write(
                    f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}\n"
                )
        if prom is not None:
            prom.close()
        receiver.close()
        k.kubectl("delete", "tenant", "sa-acme", "--ignore-not-found")
        k.kubectl("delete", "priceplan", "sa-usd", "--ignore-not-found")
        helm_on(k, "uninstall", RELEASE, "-n", NS, check=False)
        for ns in (NS, TENANT_NS, OTHER_NS):
            k.kubectl("delete", "namespace", ns, "--wait=false")


def status(k: KubeCluster) -> dict[str, Any]:
    return dict(k.get_json("tenant", "sa-acme").get("status") or {})


def test_the_operator_runs_a_full_scenario_under_the_charts_serviceaccount(
    world: dict[str, Any],
) -> None:
    k: KubeCluster = world["k"]
    log: Path = world["log"]

    # Metering, billing, status: spend is rising; the budget (1 USD = 10 GPU-seconds) ends.
    k.wait_for("Suspended", lambda: status(k).get("phase") == "Suspended", timeout=120)
    dep = k.get_json("deployment", "trainer", "-n", TENANT_NS)
    k.wait_for(
        "trainer at 0",
        lambda: k.get_json("deployment", "trainer", "-n", TENANT_NS)["spec"]["replicas"] == 0,
        timeout=30,
    )
    k.wait_for(
        "batch suspended",
        lambda: k.get_json("job", "batch", "-n", TENANT_NS)["spec"].get("suspend") is True,
        timeout=30,
    )
    assert k.get_json("deployment", "web", "-n", TENANT_NS)["spec"]["replicas"] == 2
    assert dep  # read while suspending
    # The Lease, the certificate in the chart's Secret, the caBundle, the namespace label.
    lease = k.get_json("lease", "kubemeter-operator", "-n", NS)
    assert lease["spec"]["holderIdentity"] == "sa-operator"
    secret = k.get_json("secret", f"{RELEASE}-admission-cert", "-n", NS)
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    hook = k.get_json("validatingwebhookconfiguration", f"{RELEASE}-admission")
    k.wait_for(
        "the caBundle",
        lambda: (
            k.get_json("validatingwebhookconfiguration", f"{RELEASE}-admission")["webhooks"][0][
                "clientConfig"
            ].get("caBundle")
            == secret["data"]["ca.crt"]
        ),
        timeout=30,
    )
    assert hook
    ns_labels = k.get_json("namespace", TENANT_NS)["metadata"].get("labels") or {}
    assert ns_labels.get("kubemeter.dev/tenant") == "sa-acme"
    # The webhook was signed with the key from the Secret (read under the SA's Role).
    receiver: Receiver = world["receiver"]
    k.wait_for(
        "a signed webhook",
        lambda: [r for r in receiver.requests("acme") if "X-Kubemeter-Signature" in r.headers],
    )
    events = k.get_json("events", "-A", "--field-selector", "involvedObject.name=sa-acme")
    reasons = {e["reason"] for e in events["items"]}
    assert {"BudgetExceeded", "WorkloadsSuspended"} <= reasons, reasons

    # Restore: a raised limit brings both back exactly.
    k.kubectl_ok("patch", "tenant", "sa-acme", "--type=merge",
                 "-p", json.dumps({"spec": {"budget": {"limit": "100000"}}}))  # fmt: skip
    k.wait_for(
        "trainer back at 2",
        lambda: k.get_json("deployment", "trainer", "-n", TENANT_NS)["spec"]["replicas"] == 2,
        timeout=60,
    )
    k.wait_for(
        "batch resumed",
        lambda: k.get_json("job", "batch", "-n", TENANT_NS)["spec"].get("suspend") is False,
        timeout=30,
    )
    time.sleep(3)  # a few more cycles under the token

    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    # an HTTP 403 anywhere (our errors say "HTTP 403 Forbidden", kopf's "Forbidden"), not
    # the milliseconds of a timestamp like ",403"
    refused = re.compile(r"\b(HTTP |status[ =:]*)403\b|forbidden", re.IGNORECASE)
    assert not refused.search(text), [ln for ln in text.splitlines() if refused.search(ln)][:5]


def test_what_the_operator_token_cannot_do(world: dict[str, Any]) -> None:
    """The `kubectl auth can-i` matrix with the operator's own token (printed)."""
    k: KubeCluster = world["k"]
    kubectl, kubeconfig = k.kubectl_path, world["kubeconfig"]
    everywhere = ("--all-namespaces",)
    cannot = [
        ("get", "secrets", ("-n", "default")),
        ("list", "secrets", everywhere),
        ("create", "secrets", ("-n", NS)),
        ("delete", "deployments.apps", everywhere),
        ("patch", "deployments.apps", everywhere),
        ("delete", "pods", everywhere),
        ("create", "pods", everywhere),
        ("delete", "jobs.batch", everywhere),
        ("create", "tenants.kubemeter.dev", everywhere),
        ("patch", "tenants.kubemeter.dev", everywhere),
        ("delete", "priceplans.kubemeter.dev", everywhere),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", ()),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", ()),
        ("create", "leases.coordination.k8s.io", ("-n", NS)),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", ()),
    ]
    can = [
        ("get", "secrets/acme-webhook", ("-n", NS)),
        ("patch", "deployments.apps/scale", everywhere),
        ("patch", "jobs.batch", everywhere),
        ("patch", "tenants.kubemeter.dev/status", everywhere),
        ("update", "leases.coordination.k8s.io/kubemeter-operator", ("-n", NS)),
    ]
    matrix = []
    for verb, resource, scope in can + cannot:
        path, _, sub = resource.partition("/")
        extra = ()
        if sub and sub in {"scale", "status"}:
            extra = (f"--subresource={sub}",)
            resource = path
        answer = can_i(kubeconfig, kubectl, verb, resource, *extra, *scope)
        matrix.append((verb, resource + (f"/{sub}" if extra else ""), " ".join(scope), answer))
    sys.stderr.write("\n".join(f"{'yes' if a else 'no ':3}  {v:6} {r} {s}" for v, r, s, a
                               in matrix) + "\n")  # fmt: skip
    answers = {(v, r, s): a for v, r, s, a in matrix}
    for verb, resource, _scope in can:
        assert any(a for (v, r, s), a in answers.items() if v == verb and r == resource), resource
    for (verb, resource, _), answer in zip(
        cannot, [a for *_, a in matrix[len(can) :]], strict=True
    ):
        assert not answer, (verb, resource)
