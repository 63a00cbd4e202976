"""pytest plugin: a session-scoped, real Kubernetes API server for integration tests.

Registered in tests/conftest.py as ``support.cluster``.

- ``KUBEMETER_KUBECONFIG=/path/to/kubeconfig`` set: use that existing cluster (e.g. kind, see
  docs/kind.md); nothing is started or stopped.
- otherwise: start a throwaway cluster with ``hack/devcluster.py`` (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler, kwok with fake GPU nodes) in a temp dir and stop it
  at the end of the session. Binaries come from ``make binaries``; if they are missing the
  fixture errors with that hint rather than skipping.
- ``KUBEMETER_KEEP_CLUSTER=1``: leave the started cluster running (its dir is printed) to debug.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVCLUSTER_PATH = REPO_ROOT / "hack" / "devcluster.py"
_MODULE_NAME = "kubemeter_devcluster"


def load_devcluster() -> ModuleType:
    """Import hack/devcluster.py (a standalone script, not a package) by path."""
    mod = sys.modules.get(_MODULE_NAME)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, DEVCLUSTER_PATH)
    assert spec, DEVCLUSTER_PATH
    assert spec.loader, DEVCLUSTER_PATH
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@dataclass
class KubeCluster:
    kubeconfig: str
    kubectl_path: str
    server: str | None = None
    dir: str | None = None  # set when this session started the cluster
    managed: bool = False
    gpu_resource: str = "nvidia.com/gpu"
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing at this cluster (for subprocesses)."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig, **self.extra_env}

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; never raises on a non-zero exit (check=False)."""
        return subprocess.run(
            [self.kubectl_path, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def kubectl_ok(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """Run kubectl and fail the test (with stderr) unless it exits 0; returns stdout."""
        res = self.kubectl(*args, input=input, timeout=timeout)
        if res.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}"
            )
        return res.stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl_ok("get", *args, "-o", "json"))

    def apply(self, manifest: str | dict[str, Any]) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl_ok("apply", "-f", "-", input=text)

    def wait_for(
        self, what: str, fn: Callable[[], Any], timeout: float = 60, interval: float = 0.5
    ) -> Any:
        """Poll fn() until it returns something truthy; fail the test after timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _find_kubectl(devcluster: ModuleType) -> str:
    cached = devcluster.binary_path("kubectl")
    if os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which("kubectl")
    if found:
        return found
    pytest.fail(
        f"kubectl not found: neither {cached} (run `make binaries`) nor on PATH", pytrace=False
    )


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    devcluster = load_devcluster()
    external = os.environ.get("KUBEMETER_KUBECONFIG")
    if external:
        kubeconfig = str(Path(external).expanduser().resolve())
        if not Path(kubeconfig).is_file():
            pytest.fail(f"KUBEMETER_KUBECONFIG={external} does not exist")
        yield KubeCluster(kubeconfig=kubeconfig, kubectl_path=_find_kubectl(devcluster))
        return

    cluster_dir = tmp_path_factory.mktemp("devcluster")
    try:
        started = devcluster.start(
            cluster_dir, controllers=True, gpu_nodes=2, gpus_per_node=8, die_with_parent=True
        )
    except devcluster.DevClusterError as exc:
        pytest.fail(f"could not start the dev cluster in {cluster_dir}: {exc}", pytrace=False)
    try:
        yield KubeCluster(
            kubeconfig=started.kubeconfig,
            kubectl_path=str(devcluster.binary_path("kubectl")),
            server=started.server,
            dir=str(cluster_dir),
            managed=True,
        )
    finally:
        if os.environ.get("KUBEMETER_KEEP_CLUSTER"):
            sys.stderr.write(
                f"\nKUBEMETER_KEEP_CLUSTER: cluster left running in {cluster_dir} "
                f"(stop: python hack/devcluster.py down --dir {cluster_dir})\n"
            )
        else:
            devcluster.stop(cluster_dir)
