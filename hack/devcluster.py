#!/usr/bin/env python3
"""A real, local Kubernetes control plane for development and integration tests.

Runs etcd + kube-apiserver (+ kube-controller-manager, kube-scheduler and kwok with
fake GPU nodes) as plain processes from binaries that ``hack/build-control-plane.sh``
built into ``${KUBEMETER_CACHE:-~/.cache/kubemeter}/bin/<component>-<version>/``.
No Docker needed. Standard library only (plus the ``openssl`` CLI for certificates).

CLI::

    python hack/devcluster.py up     --dir .cluster [--minimal] [--gpu-nodes 2] [--gpus-per-node 8]
    python hack/devcluster.py status --dir .cluster
    python hack/devcluster.py down   --dir .cluster [--purge]
    python hack/devcluster.py env    --dir .cluster      # prints `export KUBECONFIG=...`

``up`` returns once the API server is ready and the fake GPU nodes are Ready; the processes
keep running in the background (own session). ``up`` on a dir whose cluster runs is a no-op;
after ``down`` it restarts on the same etcd data (objects survive; ``down --purge`` wipes).

Python API (used by the pytest fixture ``kube_cluster``, and by scripts through
``hack/loader.py``)::

    from loader import devcluster  # or tests/support/cluster.py's load_devcluster()
    cluster = devcluster.start(".cluster", controllers=True, gpu_nodes=2)
    cluster.kubeconfig, cluster.server, cluster.kubectl("get", "nodes")
    devcluster.stop(".cluster")
    devcluster.binary_path("kubectl")  # any cached binary, same layout as the build script

Layout of --dir: ``kubeconfig`` (admin, system:masters), ``pki/``, ``etcd-data/``,
``logs/<component>.log``, ``pids.json`` (what ``down`` stops, and nothing else),
``cluster.json`` (server URL, ports).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HACK_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = HACK_DIR / "versions.env"

# Fake GPU node defaults.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
FAKE_NODE_LABEL = "kubemeter.dev/fake-gpu-node"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service

# Start order; `down` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

T = TypeVar("T")
Log = Callable[[str], None]
Spawn = Callable[[Path, str, list[str]], int]  # (dir, component, argv) -> pid


class DevClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------- versions / binaries


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return out


def cache_dir() -> Path:
    env = os.environ.get("KUBEMETER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kubemeter"


_COMPONENT_VERSION_KEY = {
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "etcd": "ETCD_VERSION",
    "kwok": "KWOK_VERSION",
    "helm": "HELM_VERSION",
}


def binary_path(name: str) -> Path:
    """Cached binary: <cache>/bin/<name>-<version>/<name> (the build script's layout)."""
    version = read_versions()[_COMPONENT_VERSION_KEY[name]]
    return cache_dir() / "bin" / f"{name}-{version}" / name


def _require_binaries(names: list[str]) -> dict[str, str]:
    paths = {n: binary_path(n) for n in names}
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise DevClusterError(
            "missing control-plane binaries (run `make binaries` or hack/build-control-plane.sh): "
            + ", ".join(missing)
        )
    return {n: str(p) for n, p in paths.items()}


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise DevClusterError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    return res


def _pid_alive(pid: int) -> bool:
    # Reap it if it is our own (exited) child, so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _pid_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


# --------------------------------------------------------------------------- PKI (openssl CLI)


def _openssl() -> str:
    exe = shutil.which("openssl")
    if not exe:
        raise DevClusterError("openssl CLI not found on PATH")
    return exe


def _gen_key(path: Path, rsa: bool = False) -> None:
    """ECDSA P-256 keys for TLS (fast to generate); RSA-2048 if asked (service accounts)."""
    if not path.exists():
        algo = (
            ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            if rsa
            else ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        )
        _run([_openssl(), "genpkey", *algo, "-out", str(path)])
        path.chmod(0o600)


def _sign_cert(
    pki: Path,
    name: str,
    subject: str,
    *,
    client: bool,
    server: bool,
    sans: list[str] | None = None,
    ca: str = "ca",
) -> None:
    crt, key, csr, ext = (
        pki / f"{name}.crt",
        pki / f"{name}.key",
        pki / f"{name}.csr",
        pki / f"{name}.ext",
    )
    if crt.exists() and key.exists():
        return
    _gen_key(key)
    _run([_openssl(), "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)])
    usages = []
    if server:
        usages.append("serverAuth")
    if client:
        usages.append("clientAuth")
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=" + ",".join(usages),
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _run(
        [
            _openssl(),
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(pki / f"{ca}.crt"),
            "-CAkey",
            str(pki / f"{ca}.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        ]
    )
    csr.unlink(missing_ok=True)
    ext.unlink(missing_ok=True)


def generate_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs, service-account key pair. Idempotent."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        _gen_key(pki / "ca.key")
        _run(
            [
                _openssl(),
                "req",
                "-x509",
                "-new",
                "-key",
                str(pki / "ca.key"),
                "-subj",
                "/CN=kubemeter-devcluster-ca",
                "-days",
                "3650",
                "-sha256",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-out",
                str(pki / "ca.crt"),
            ]
        )
    _sign_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        client=False,
        server=True,
        sans=[
            "IP:127.0.0.1",
            "DNS:localhost",
            f"IP:{SERVICE_IP}",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ],
    )
    _sign_cert(pki, "admin", "/O=system:masters/CN=kubernetes-admin", client=True, server=False)
    _sign_cert(
        pki, "controller-manager", "/CN=system:kube-controller-manager", client=True, server=False
    )
    _sign_cert(pki, "scheduler", "/CN=system:kube-scheduler", client=True, server=False)
    # Front proxy (request-header authentication for aggregated API servers); also keeps
    # the controller-manager/scheduler from logging a missing requestheader CA bundle.
    if not (pki / "front-proxy-ca.crt").exists():
        _gen_key(pki / "front-proxy-ca.key")
        _run(
            [
                _openssl(), "req", "-x509", "-new", "-key", str(pki / "front-proxy-ca.key"),
                "-subj", "/CN=kubemeter-devcluster-front-proxy-ca", "-days", "3650", "-sha256",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-out", str(pki / "front-proxy-ca.crt"),
            ]
        )  # fmt: skip
    _sign_cert(
        pki, "front-proxy-client", "/CN=front-proxy-client", client=True, server=False,
        ca="front-proxy-ca",
    )  # fmt: skip
    if not (pki / "sa.pub").exists():
        _gen_key(pki / "sa.key", rsa=True)
        _run(
            [_openssl(), "pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")]
        )


def write_kubeconfig(path: Path, server: str, pki: Path, user: str, cert: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubemeter-dev",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{cert}.crt"),
                    "client-key-data": b64(pki / f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "kubemeter-dev", "context": {"cluster": "kubemeter-dev", "user": user}}
        ],
        "current-context": "kubemeter-dev",
    }
    # JSON is valid YAML; kubectl and client libraries read it.
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------- cluster state


@dataclass
class Cluster:
    dir: str
    server: str
    kubeconfig: str
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary_path("kubectl")), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    # Minimal HTTPS client authenticated as the admin (no kubectl process needed).
    def _ssl_context(self) -> ssl.SSLContext:
        pki = Path(self.dir) / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        timeout: float = 10,
        content_type: str = "application/json",
    ) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def _state_path(d: Path) -> Path:
    return d / "cluster.json"


def _pids_path(d: Path) -> Path:
    return d / "pids.json"


def _load_pids(d: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(_pids_path(d).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _save_pids(d: Path, pids: dict[str, int]) -> None:
    tmp = _pids_path(d).with_suffix(".tmp")
    tmp.write_text(json.dumps(pids, indent=2) + "\n")
    tmp.replace(_pids_path(d))


def _running(d: Path) -> dict[str, bool]:
    return {name: _pid_alive(pid) for name, pid in _load_pids(d).items()}


def load(d: str | os.PathLike[str]) -> Cluster | None:
    """The cluster recorded in dir (whether or not its processes still run)."""
    d = Path(d).resolve()
    try:
        st = json.loads(_state_path(d).read_text())
    except (OSError, ValueError):
        return None
    return Cluster(
        dir=str(d),
        server=st["server"],
        kubeconfig=str(d / "kubeconfig"),
        ports=st.get("ports", {}),
        pids=_load_pids(d),
    )


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_PDEATHSIG: SIGKILL (not SIGTERM: etcd and kube-apiserver shutting down at once
    # can wait on each other for a long time; the cluster is throwaway) when the parent dies.
    libc.prctl(1, int(signal.SIGKILL))


def _spawn(d: Path, name: str, argv: list[str], die_with_parent: bool = False) -> int:
    logs = d / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(d),
            start_new_session=True,
            close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    pids = _load_pids(d)
    pids[name] = proc.pid
    _save_pids(d, pids)
    return proc.pid


def _log_tail(d: Path, name: str, n: int = 30) -> str:
    try:
        lines = (d / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _wait(
    what: str,
    fn: Callable[[], T],
    timeout: float,
    d: Path,
    component: str | None = None,
    interval: float = 0.2,
) -> T:
    """Call `fn` every `interval` seconds until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        if component is not None:
            pid = _load_pids(d).get(component)
            if pid is not None and not _pid_alive(pid):
                raise DevClusterError(
                    f"{component} exited while waiting for {what}:\n{_log_tail(d, component)}"
                )
        try:
            result = fn()
            if result:
                return result
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    tail = _log_tail(d, component) if component else ""
    raise DevClusterError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})\n{tail}"
    )


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- nodes


def fake_gpu_node(name: str, gpus: int) -> dict[str, Any]:
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                FAKE_NODE_LABEL: "true",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kernelVersion": "",
                "osImage": "",
                "containerRuntimeVersion": "",
                "kubeProxyVersion": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }


def create_gpu_nodes(
    cluster: Cluster, count: int, gpus_per_node: int, prefix: str = "gpu-node"
) -> list[str]:
    names = []
    for i in range(count):
        name = f"{prefix}-{i}"
        names.append(name)
        status, body = cluster.request("POST", "/api/v1/nodes", fake_gpu_node(name, gpus_per_node))
        if status == 409:
            continue
        if status >= 300:
            raise DevClusterError(f"creating node {name} failed: HTTP {status}: {body}")
    return names


def _node_ready(node: dict[str, Any]) -> bool:
    conditions: list[dict[str, str]] = (node.get("status") or {}).get("conditions") or []
    for c in conditions:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def wait_nodes_ready(cluster: Cluster, names: list[str], timeout: float = 60) -> None:
    def ready() -> bool:
        status, body = cluster.request("GET", "/api/v1/nodes")
        if status != 200 or not isinstance(body, dict):
            return False
        ok = {n["metadata"]["name"] for n in body.get("items", []) if _node_ready(n)}
        return all(n in ok for n in names)

    _wait(f"nodes {names} Ready", ready, timeout, Path(cluster.dir), "kwok", interval=0.3)


# --------------------------------------------------------------------------- up / down


def start(
    dir: str | os.PathLike[str] = ".cluster",
    *,
    controllers: bool = True,
    gpu_nodes: int = 2,
    gpus_per_node: int = 8,
    timeout: float = 120,
    die_with_parent: bool = False,
    log: Log | None = None,
) -> Cluster:
    """Start (or reuse, if already running) a dev cluster in ``dir`` and return it.

    The processes outlive this Python process (own session) unless ``die_with_parent``:
    then the kernel SIGKILLs them when the calling thread exits (Linux PR_SET_PDEATHSIG),
    so a killed test run does not leak a cluster.
    """
    say = log or (lambda msg: None)
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    running = _running(d)
    existing = load(d)
    if existing and running.get("kube-apiserver") and running.get("etcd"):
        wanted = set(COMPONENTS) if controllers else {"etcd", "kube-apiserver"}
        if all(running.get(c) for c in wanted):
            say(f"already running in {d}")
            return existing
        say("some components are not running; restarting the cluster")
    if any(running.values()):
        stop(d)

    try:
        return _start(
            d,
            controllers=controllers,
            gpu_nodes=gpu_nodes,
            gpus_per_node=gpus_per_node,
            timeout=timeout,
            say=say,
            t0=t0,
            spawn=functools.partial(_spawn, die_with_parent=die_with_parent),
        )
    except BaseException:
        # Leave nothing running behind a failed start (logs stay in dir/logs).
        stop(d, log=say)
        raise


def _start(
    d: Path,
    *,
    controllers: bool,
    gpu_nodes: int,
    gpus_per_node: int,
    timeout: float,
    say: Log,
    t0: float,
    spawn: Spawn,
) -> Cluster:
    names = ["etcd", "kube-apiserver", "kubectl"]
    if controllers:
        names += ["kube-controller-manager", "kube-scheduler", "kwok"]
    bins = _require_binaries(names)

    pki = d / "pki"
    generate_pki(pki)
    say(f"pki ready ({time.monotonic() - t0:.1f}s)")

    ports = {"etcd-client": free_port(), "etcd-peer": free_port(), "apiserver": free_port()}
    if controllers:
        ports.update(
            {"controller-manager": free_port(), "scheduler": free_port(), "kwok": free_port()}
        )
    server = f"https://127.0.0.1:{ports['apiserver']}"
    cluster = Cluster(dir=str(d), server=server, kubeconfig=str(d / "kubeconfig"), ports=ports)
    _state_path(d).write_text(json.dumps({"server": server, "ports": ports}, indent=2) + "\n")
    _save_pids(d, {})

    # ---- etcd (plain HTTP on loopback; fsync off: throwaway data)
    etcd_client = f"http://127.0.0.1:{ports['etcd-client']}"
    etcd_peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    spawn(
        d,
        "etcd",
        [
            bins["etcd"],
            "--name=devcluster",
            f"--data-dir={d / 'etcd-data'}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=devcluster={etcd_peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    _wait("etcd", lambda: _tcp_open(ports["etcd-client"]), 30, d, "etcd", interval=0.1)
    say(f"etcd up on {etcd_client} ({time.monotonic() - t0:.1f}s)")

    # ---- kube-apiserver
    sa_issuer = "https://kubernetes.default.svc.cluster.local"
    spawn(
        d,
        "kube-apiserver",
        [
            bins["kube-apiserver"],
            f"--etcd-servers={etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={sa_issuer}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--api-audiences={sa_issuer}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Front proxy / request-header auth (aggregated API servers).
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            # The default plugins stay on (incl. MutatingAdmissionWebhook,
            # ValidatingAdmissionWebhook, ValidatingAdmissionPolicy, ServiceAccount,
            # ResourceQuota, LimitRanger, ...); this adds to them.
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # A loopback advertise address cannot be written to the `kubernetes` Endpoints
            # (validation rejects 127.0.0.0/8): do not reconcile them; nothing here needs them.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ],
    )

    def readyz() -> bool:
        status, _ = cluster.request("GET", "/readyz", timeout=3)
        return status == 200

    _wait("kube-apiserver /readyz", readyz, timeout, d, "kube-apiserver", interval=0.25)
    write_kubeconfig(d / "kubeconfig", server, pki, "kubernetes-admin", "admin")
    say(f"kube-apiserver ready at {server} ({time.monotonic() - t0:.1f}s)")

    if not controllers:
        return load(d) or cluster

    cm_kc, sched_kc = d / "controller-manager.kubeconfig", d / "scheduler.kubeconfig"
    write_kubeconfig(cm_kc, server, pki, "system:kube-controller-manager", "controller-manager")
    write_kubeconfig(sched_kc, server, pki, "system:kube-scheduler", "scheduler")

    spawn(
        d,
        "kube-controller-manager",
        [
            bins["kube-controller-manager"],
            f"--kubeconfig={cm_kc}",
            f"--authentication-kubeconfig={cm_kc}",
            f"--authorization-kubeconfig={cm_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            "--leader-elect=false",
            # All default controllers; nodeipam is inert without --allocate-node-cidrs and
            # there is no cloud provider, so nothing needs disabling.
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--v=1",
        ],
    )
    spawn(
        d,
        "kube-scheduler",
        [
            bins["kube-scheduler"],
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
            "--v=1",
        ],
    )
    # kwok's built-in default stages (node-initialize + heartbeat-with-lease, pod ready/
    # complete/delete) apply when no Stage config is given; it only touches annotated nodes.
    spawn(
        d,
        "kwok",
        [
            bins["kwok"],
            f"--kubeconfig={d / 'kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--cidr=10.0.0.1/16",
            "--node-ip=10.0.0.1",
            "--node-lease-duration-seconds=40",
        ],
    )

    node_names = create_gpu_nodes(cluster, gpu_nodes, gpus_per_node)
    if node_names:
        wait_nodes_ready(cluster, node_names, timeout=timeout)
    say(f"{len(node_names)} fake GPU node(s) Ready ({time.monotonic() - t0:.1f}s)")

    # Pods need the namespace's `default` ServiceAccount (created by the controller-manager).
    def default_sa() -> bool:
        status, _ = cluster.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    _wait(
        "default ServiceAccount", default_sa, timeout, d, "kube-controller-manager", interval=0.25
    )
    for comp in ("kube-controller-manager", "kube-scheduler", "kwok"):
        pid = _load_pids(d).get(comp)
        if pid is None or not _pid_alive(pid):
            raise DevClusterError(f"{comp} is not running:\n{_log_tail(d, comp)}")
    say(f"cluster up in {time.monotonic() - t0:.1f}s; export KUBECONFIG={d / 'kubeconfig'}")
    return load(d) or cluster


def stop(
    dir: str | os.PathLike[str] = ".cluster", timeout: float = 15, log: Log | None = None
) -> list[str]:
    """Stop the processes in dir/pids.json (SIGTERM, then SIGKILL); return their names."""
    say = log or (lambda msg: None)
    d = Path(dir).resolve()
    pids = _load_pids(d)
    stopped = []
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid is None or not _pid_alive(pid):
            continue
        # Guard against pid reuse: only signal a process that runs the binary we started.
        if name not in _pid_cmdline(pid):
            say(f"{name}: pid {pid} is not {name} any more; leaving it alone")
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            say(f"{name}: pid {pid} ignored SIGTERM; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
        stopped.append(name)
        say(f"stopped {name} (pid {pid})")
    if pids:
        _save_pids(d, {})
    return stopped


def status(dir: str | os.PathLike[str] = ".cluster") -> dict[str, Any]:
    d = Path(dir).resolve()
    cluster = load(d)
    pids = _load_pids(d)
    out: dict[str, Any] = {
        "dir": str(d),
        "components": {n: {"pid": p, "running": _pid_alive(p)} for n, p in pids.items()},
    }
    if cluster:
        out["server"] = cluster.server
        out["kubeconfig"] = cluster.kubeconfig
        if out["components"].get("kube-apiserver", {}).get("running"):
            try:
                code, body = cluster.request("GET", "/readyz", timeout=3)
                out["readyz"] = body if code == 200 else f"HTTP {code}"
            except OSError as exc:
                out["readyz"] = f"error: {exc}"
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster (idempotent)")
    up.add_argument("--dir", default=".cluster")
    up.add_argument(
        "--minimal",
        "--no-controllers",
        dest="minimal",
        action="store_true",
        help="etcd + kube-apiserver only",
    )
    up.add_argument("--gpu-nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--timeout", type=float, default=120)
    dn = sub.add_parser("down", help="stop what `up` started")
    dn.add_argument("--dir", default=".cluster")
    dn.add_argument("--purge", action="store_true", help="also delete the directory")
    st = sub.add_parser("status")
    st.add_argument("--dir", default=".cluster")
    env = sub.add_parser("env", help="print `export KUBECONFIG=...`")
    env.add_argument("--dir", default=".cluster")
    args = p.parse_args(argv)

    def say(msg: str) -> None:
        print(f"[devcluster] {msg}", file=sys.stderr, flush=True)

    try:
        if args.cmd == "up":
            c = start(
                args.dir,
                controllers=not args.minimal,
                gpu_nodes=args.gpu_nodes,
                gpus_per_node=args.gpus_per_node,
                timeout=args.timeout,
                log=say,
            )
            print(c.kubeconfig)
        elif args.cmd == "down":
            stop(args.dir, log=say)
            if args.purge:
                shutil.rmtree(Path(args.dir).resolve(), ignore_errors=True)
        elif args.cmd == "status":
            s = status(args.dir)
            print(json.dumps(s, indent=2))
            comps = s["components"]
            return 0 if comps and all(c["running"] for c in comps.values()) else 1
        elif args.cmd == "env":
            print(f"export KUBECONFIG={Path(args.dir).resolve() / 'kubeconfig'}")
    except DevClusterError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
