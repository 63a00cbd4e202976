"""The admission webhook through a real kube-apiserver: the API server calls it, and kubectl
shows the denial.

The webhook runs in-process on 127.0.0.1 (its own event loop in a thread), exactly as the
operator runs it (`AdmissionWebhook.for_cluster`): it creates its certificate Secret, sets
the caBundle of a ValidatingWebhookConfiguration created after it started (retried until
it exists), and labels the Tenants' namespaces. The Tenants it sees come from the API
server (a poller standing in for the operator's kopf watch), so a status patch to
`enforcement.state: Suspended` or `Restored` is what switches denials on and off.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

from kubemeter_operator.admission.kube import whoami
from kubemeter_operator.admission.labels import TENANT_LABEL
from kubemeter_operator.admission.webhook import AdmissionSettings, AdmissionWebhook
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.kube.client import load_api_client
from kubemeter_operator.kube.gpu import GpuResources

from support.cluster import KubeCluster
from support.paths import CRDS_DIR

pytestmark = pytest.mark.integration

SUSPENDED, ACTIVE, SYSTEM = "adm-acme", "adm-globex", "adm-system"
WEBHOOK = "kubemeter-admission-it"
CERT = "kubemeter-admission-it-cert"
OPERATOR = "kubemeter-it-operator"
PREFIX = "adm-"


def suspended_status(state: str) -> dict[str, Any]:
    return {
        "status": {
            "period": "2026-11", "currency": "USD", "total": "1012.40",
            "budget": {"limit": "1000", "used": "1012.40", "usedPercent": "101.24",
                       "remaining": "-12.40"},
            "enforcement": {"state": state, "trigger": "budgetExceeded",
                            "reason": "budget spent", "period": "2026-11",
                            "startedAt": "2026-11-20T12:00:00Z", "limit": "1000"},
        }
    }  # fmt: skip


def tenant(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubemeter.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"pricePlanRef": {"name": "adm-usd"}, "namespaces": [namespace],
                 "budget": {"limit": "1000", "enforcement": "scaleDown"}},
    }  # fmt: skip


def webhook_configuration(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "gpu.admission.kubemeter.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate"},
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                 "resources": ["pods"], "scope": "Namespaced"},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["deployments", "statefulsets"], "scope": "Namespaced"},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                 "resources": ["deployments/scale", "statefulsets/scale"],
                 "scope": "Namespaced"},
                {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["jobs", "cronjobs"], "scope": "Namespaced"},
            ],
            # only this test's namespaces, whatever else the session labels
            "namespaceSelector": {"matchExpressions": [
                {"key": TENANT_LABEL, "operator": "In", "values": [SUSPENDED, ACTIVE]}]},
            # Fail: an allowed request here was answered "allowed" by the webhook, never
            # let through because the API server could not reach it
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }  # fmt: skip


def gpu_container(gpus: int = 1) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": "vllm/vllm-openai"}
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return c


def pod(name: str, namespace: str, gpus: int = 1) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [gpu_container(gpus)]},
    })  # fmt: skip


class TenantPoller:
    """The Tenants of this test as the operator's watch would keep them (every 0.2 s)."""

    def __init__(self, api_client: Any) -> None:
        self._api = kubernetes.client.CustomObjectsApi(api_client)
        self.tenants: dict[str, Tenant] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = self._api.list_cluster_custom_object(
                    "kubemeter.dev", "v1alpha1", "tenants"
                )["items"]
            except Exception:  # the test fails on its own assertions; keep polling
                items = None
            if items is not None:
                self.tenants = {
                    i["metadata"]["name"]: Tenant.model_validate(i)
                    for i in items
                    if i["metadata"]["name"].startswith(PREFIX)
                }
            self._stop.wait(0.2)

    def start(self) -> TenantPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class RunningWebhook:
    """The webhook on its own event loop in a background thread."""

    def __init__(self, hook: AdmissionWebhook) -> None:
        self.hook = hook
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(hook.start(), self.loop).result(timeout=60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.hook.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def set_state(k: KubeCluster, poller: TenantPoller, state: str) -> None:
    k.kubectl_ok("patch", "tenant", SUSPENDED, "--subresource=status", "--type=merge",
                 "-p", json.dumps(suspended_status(state)))  # fmt: skip

    def seen() -> bool:
        t = poller.tenants.get(SUSPENDED)
        e = t.status.enforcement if t is not None and t.status is not None else None
        return e is not None and e.state.value == state

    k.wait_for(f"the webhook to see {SUSPENDED} {state}", seen, timeout=30, interval=0.1)


@pytest.fixture(scope="module")
def webhook(kube_cluster: KubeCluster) -> Iterator[tuple[KubeCluster, TenantPoller]]:
    k = kube_cluster
    k.kubectl_ok("apply", "-f", str(CRDS_DIR))
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        k.kubectl_ok("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    for ns in (SUSPENDED, ACTIVE, SYSTEM):
        k.kubectl("create", "namespace", ns)
    k.apply(tenant(SUSPENDED, SUSPENDED))
    k.apply(tenant(ACTIVE, ACTIVE))
    api_client = load_api_client(k.kubeconfig)
    poller = TenantPoller(api_client).start()
    running = RunningWebhook(
        AdmissionWebhook.for_cluster(
            api_client,
            AdmissionSettings(
                host="127.0.0.1", port=0, webhook_name=WEBHOOK, cert_namespace=SYSTEM,
                cert_name=CERT, hosts=("127.0.0.1",), gpu=GpuResources(),
                exempt_username=OPERATOR, retry_s=0.5, label_interval_s=0.5,
            ),
            tenants=lambda: poller.tenants,
            leading=lambda: True,
        )
    )  # fmt: skip
    try:
        # created after the webhook started: its caBundle is set on the next retry
        k.apply(webhook_configuration(running.hook.port))

        def ca_bundle() -> str:
            cfg = k.get_json("validatingwebhookconfiguration", WEBHOOK)
            return str(cfg["webhooks"][0]["clientConfig"].get("caBundle") or "")

        k.wait_for("the caBundle", ca_bundle, timeout=30)

        def labelled() -> bool:
            labels = [
                k.get_json("namespace", ns)["metadata"].get("labels", {}).get(TENANT_LABEL)
                for ns in (SUSPENDED, ACTIVE)
            ]
            return labels == [SUSPENDED, ACTIVE]

        k.wait_for("the tenant labels on the namespaces", labelled, timeout=30)
        set_state(k, poller, "Suspended")
        yield k, poller
    finally:
        k.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK, "--ignore-not-found")
        running.close()
        poller.stop()
        for name in (SUSPENDED, ACTIVE):
            k.kubectl("delete", "tenant", name, "--ignore-not-found")
        for ns in (SUSPENDED, ACTIVE, SYSTEM):
            k.kubectl("delete", "namespace", ns, "--wait=false")


def assert_denied(res: Any, *parts: str) -> None:
    assert res.returncode != 0, res.stdout
    assert 'admission webhook "gpu.admission.kubemeter.dev" denied the request' in res.stderr
    for part in parts:
        assert part in res.stderr, res.stderr


def test_the_certificate_lives_in_its_secret_and_the_ca_bundle_is_its_ca(webhook):
    k, _ = webhook
    secret = k.get_json("secret", CERT, "-n", SYSTEM)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    cfg = k.get_json("validatingwebhookconfiguration", WEBHOOK)
    assert cfg["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert base64.b64decode(secret["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE")


def test_creating_a_gpu_pod_is_denied_naming_tenant_limit_and_spend(webhook):
    k, _ = webhook
    res = k.kubectl("create", "-f", "-", input=pod("llm", SUSPENDED))
    assert_denied(res, f"tenant '{SUSPENDED}'", "limit 1000 USD", "spent 1012.40 USD",
                  "spec.budget.limit", "kubemeter wallet topup",
                  "spec.budget.enforcement to alert")  # fmt: skip
    assert k.kubectl("get", "pod", "llm", "-n", SUSPENDED).returncode != 0


def test_a_non_gpu_pod_is_allowed(webhook):
    k, _ = webhook
    k.kubectl_ok("create", "-f", "-", input=pod("cpu-only", SUSPENDED, gpus=0))


def test_a_gpu_pod_of_a_tenant_not_suspended_is_allowed(webhook):
    k, _ = webhook
    k.kubectl_ok("create", "-f", "-", input=pod("llm", ACTIVE))


def test_kubectl_scale_of_a_gpu_deployment_is_denied(webhook):
    k, _ = webhook
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "infer", "namespace": SUSPENDED},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "infer"}},
                 "template": {"metadata": {"labels": {"app": "infer"}},
                              "spec": {"containers": [gpu_container()]}}},
    }  # fmt: skip
    k.kubectl_ok("create", "-f", "-", input=json.dumps(deployment))  # 0 replicas: allowed
    res = k.kubectl("scale", "deployment", "infer", "-n", SUSPENDED, "--replicas=3")
    assert_denied(res, "scaling Deployment 'infer' to 3 replicas", f"tenant '{SUSPENDED}'")
    spec = k.get_json("deployment", "infer", "-n", SUSPENDED)["spec"]
    assert spec["replicas"] == 0
    # editing the object itself is the same scale-up
    res = k.kubectl("patch", "deployment", "infer", "-n", SUSPENDED, "--type=merge",
                    "-p", '{"spec":{"replicas":2}}')  # fmt: skip
    assert_denied(res, "scaling up GPU Deployment 'infer' to 2 replicas")


def test_unsuspending_a_gpu_job_is_denied(webhook):
    k, _ = webhook
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "train", "namespace": SUSPENDED},
        "spec": {"suspend": True, "template": {"spec": {
            "restartPolicy": "Never", "containers": [gpu_container()]}}},
    }  # fmt: skip
    k.kubectl_ok("create", "-f", "-", input=json.dumps(job))  # suspended: allowed
    res = k.kubectl("patch", "job", "train", "-n", SUSPENDED, "--type=merge",
                    "-p", '{"spec":{"suspend":false}}')  # fmt: skip
    assert_denied(res, "unsuspending GPU Job 'train'")
    assert k.get_json("job", "train", "-n", SUSPENDED)["spec"]["suspend"] is True


def test_the_operator_itself_is_allowed(webhook):
    k, _ = webhook
    k.kubectl_ok("--as", OPERATOR, "--as-group", "system:masters",
                 "create", "-f", "-", input=pod("restored", SUSPENDED))  # fmt: skip


def test_once_restored_a_gpu_pod_is_allowed(webhook):
    k, poller = webhook
    set_state(k, poller, "Restored")
    try:
        k.kubectl_ok("create", "-f", "-", input=pod("llm-after", SUSPENDED))
    finally:
        set_state(k, poller, "Suspended")
    res = k.kubectl("create", "--dry-run=server", "-f", "-", input=pod("llm-2", SUSPENDED))
    assert_denied(res, f"tenant '{SUSPENDED}'")


def test_the_operator_learns_its_own_username(kube_cluster: KubeCluster):
    api_client = load_api_client(kube_cluster.kubeconfig)
    expected = json.loads(kube_cluster.kubectl_ok("auth", "whoami", "-o", "json"))
    assert whoami(api_client) == expected["status"]["userInfo"]["username"]
    assert whoami(api_client)


def test_every_authenticated_user_may_ask_who_it_is(kube_cluster: KubeCluster):
    # so the chart needs no RBAC for the operator's SelfSubjectReview
    out = kube_cluster.kubectl_ok(
        "auth", "can-i", "create", "selfsubjectreviews.authentication.k8s.io",
        "--as", "system:serviceaccount:kubemeter:km-operator",
    )  # fmt: skip
    assert out.strip() == "yes"
