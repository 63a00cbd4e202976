"""The exporter's privileges in the Helm chart: no Kubernetes API access at all (a
ServiceAccount with no RBAC and no token), and a hardened container. Rendered with helm and,
for the RBAC, checked against a real kube-apiserver with ``kubectl auth can-i``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import one, render
from support.cluster import KubeCluster
from support.paths import REPO_ROOT
from support.prometheus import free_port

pytestmark = pytest.mark.integration

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def bound_to(docs: list[dict[str, Any]], sa: str, namespace: str) -> list[str]:
    return [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        for s in d.get("subjects") or []
        if s.get("kind") == "ServiceAccount"
        and s.get("name") == sa
        and s.get("namespace", d["metadata"].get("namespace")) == namespace
    ]


def test_exporter_service_account_has_no_rbac_and_no_token() -> None:
    docs = render()
    sa = one(docs, "ServiceAccount", "km-exporter")
    assert sa["automountServiceAccountToken"] is False
    assert bound_to(docs, "km-exporter", "kubemeter") == []
    exporter_roles = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in RBAC_KINDS and "exporter" in d["metadata"]["name"]
    ]
    assert exporter_roles == []
    # The operator keeps its own RBAC (this test is not passing because RBAC vanished).
    assert bound_to(docs, "km-operator", "kubemeter")


def test_exporter_pod_is_hardened() -> None:
    ds = one(render(), "DaemonSet", "km-exporter")
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "km-exporter"
    assert pod["automountServiceAccountToken"] is False
    assert pod["hostPID"] is True  # the driver shows other containers' PIDs to no one else
    assert not pod.get("hostNetwork")
    assert not pod.get("hostIPC")
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    # The only host path is the kubelet's pod-resources directory, read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {n: v["hostPath"]["path"] for n, v in volumes.items() if "hostPath" in v} == {
        "pod-resources": "/var/lib/kubelet/pod-resources"
    }
    assert all(m["readOnly"] for m in c["volumeMounts"])
    # NVML's device nodes come from the NVIDIA runtime, not from a GPU request.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert not any("nvidia.com" in r for r in (c.get("resources") or {}).get("limits", {}))
    assert "--proc-root=/proc" in c["args"]
    assert not [a for a in c["args"] if "kubeconfig" in a]


def test_exporter_security_context_is_overridable() -> None:
    default = one(render(), "DaemonSet", "km-exporter")["spec"]["template"]["spec"]
    assert default["securityContext"]["runAsUser"] == 0  # the kubelet socket is root-only
    pod = one(
        render(
            "km",
            "kubemeter",
            "exporter.securityContext.runAsUser=10001",
            "exporter.securityContext.runAsGroup=10001",
            "exporter.securityContext.runAsNonRoot=true",
            "exporter.securityContext.fsGroup=2000",
            "exporter.securityContext.supplementalGroups={996}",
        ),
        "DaemonSet",
        "km-exporter",
    )["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "runAsNonRoot": True,
        "fsGroup": 2000,
        "supplementalGroups": [996],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # The container's own hardening does not depend on the values.
    sc = pod["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}


def _can_i(k: KubeCluster, user: str, verb: str, resource: str, *scope: str) -> bool:
    res = k.kubectl("auth", "can-i", verb, resource, *scope, f"--as={user}")
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), (res.stdout, res.stderr)
    return answer == "yes"


def test_exporter_cannot_use_the_api_server(kube_cluster: KubeCluster) -> None:
    """The chart's RBAC applied to a real API server: the exporter may do nothing."""
    release, ns = "kmsec", "kubemeter-sec"
    docs = render(release, ns)
    rbac = [d for d in docs if d["kind"] in (*RBAC_KINDS, "ServiceAccount")]
    kube_cluster.kubectl("create", "namespace", ns)
    manifest = yaml.safe_dump_all(rbac)
    kube_cluster.kubectl_ok("apply", "-f", "-", input=manifest)
    try:
        exporter = f"system:serviceaccount:{ns}:{release}-exporter"
        operator = f"system:serviceaccount:{ns}:{release}-operator"
        # The operator's bindings are in force: the check below is not vacuous.
        assert _can_i(kube_cluster, operator, "list", "pods", "--all-namespaces")
        for verb, resource, *scope in [
            ("list", "pods", "--all-namespaces"),
            ("watch", "pods", "--all-namespaces"),
            ("get", "pods", "-n", ns),
            ("list", "pods", "-n", ns),
            ("get", "nodes"),
            ("get", "secrets", "-n", ns),
            ("create", "events", "-n", ns),
            ("get", "tenants.kubemeter.dev"),
        ]:
            assert not _can_i(kube_cluster, exporter, verb, resource, *scope), (verb, resource)
        sa = kube_cluster.get_json("serviceaccount", f"{release}-exporter", "-n", ns)
        assert sa["automountServiceAccountToken"] is False
    finally:
        kube_cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest)
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_simulated_gpus_need_no_host_access_and_the_rendered_command_serves_metrics(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """exporter.simulation (clusters without GPUs, e.g. kind): no hostPath, no hostPID, so
    a `baseline` namespace admits the pod; the rendered command, run here with the
    ConfigMap's file, serves the scenario's GPU counters."""
    docs = render("km", "km-sim", "exporter.simulation.scenarioConfigMap=km-scenario",
                  "exporter.simulation.speed=10")  # fmt: skip
    spec = one(docs, "DaemonSet", "km-exporter")["spec"]["template"]["spec"]
    assert "hostPID" not in spec
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    assert {"name": "scenario", "configMap": {"name": "km-scenario"}} in spec["volumes"]

    k, ns = kube_cluster, "km-sim-baseline"
    k.kubectl("create", "namespace", ns)
    k.kubectl_ok("label", "--overwrite", "namespace", ns,
                 "pod-security.kubernetes.io/enforce=baseline")  # fmt: skip
    try:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sim", "namespace": ns},
               "spec": {**spec, "serviceAccountName": "default"}}  # fmt: skip
        k.kubectl_ok("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    finally:
        k.kubectl("delete", "namespace", ns, "--wait=false")

    (container,) = spec["containers"]
    scenario = REPO_ROOT / "examples" / "scenarios" / "demo.yaml"
    port = free_port()
    args = [a.replace("/etc/kubemeter/scenario/scenario.yaml", str(scenario))
            .replace(f"0.0.0.0:{container['ports'][0]['containerPort']}", f"127.0.0.1:{port}")
            for a in container["args"]]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / container["command"][0]), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and "kubemeter_gpu_allocated" not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.3)
        assert "kubemeter_gpu_allocated_milliseconds_total{" in body, body[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)
