"""The images of `make image` (hack/build-image.sh: buildah on an mmdebstrap Debian base) run:
the operator image answers `kubemeter --version`, the exporter image serves `/metrics` from a
simulated node without any of the operator's dependencies, and both run as uid 10001 with
PYTHONDONTWRITEBYTECODE, from a venv without pip and with no pip cache.

How they run here, without a container daemon: `buildah from` + `buildah run --isolation
chroot`. The OCI runtime (crun) cannot create a container on this host (hybrid cgroups:
"cgroups in hybrid mode not supported"); chroot isolation needs no cgroups, applies the
image's user, environment and working directory, and shares the host's network, so the
exporter's port is reachable on 127.0.0.1. The build itself is cached (base rootfs under
$KUBEMETER_CACHE, layers in buildah's storage): a warm run takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubemeter_exporter import contract as c

from support.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

BUILD = REPO_ROOT / "hack" / "build-image.sh"
SCENARIO = "/usr/share/kubemeter/scenarios/demo.yaml"  # copied in by the Dockerfile
UID = 10001


def _buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Target -> image name, after building (or finding cached) both images."""
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not installed: run hack/install-system-deps.sh (make setup does)"
            )
    t0 = time.monotonic()
    res = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=1500, check=False, cwd=REPO_ROOT
    )
    if res.returncode != 0:
        pytest.fail(f"hack/build-image.sh failed ({res.returncode}):\n{res.stderr[-6000:]}")
    print(f"hack/build-image.sh: {time.monotonic() - t0:.0f} s\n{res.stdout}")
    names = subprocess.run(
        [str(BUILD), "--print-names"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in names.splitlines())


@contextlib.contextmanager
def container(image: str) -> Iterator[str]:
    """A working container of `image`, removed afterwards."""
    name = f"kubemeter-test-{uuid.uuid4().hex[:12]}"
    made = _buildah("from", "--pull=never", "--name", name, image)
    assert made.returncode == 0, made.stderr
    try:
        yield name
    finally:
        _buildah("rm", name)


def run_argv(ctr: str, *argv: str) -> list[str]:
    return ["buildah", "run", "--isolation", "chroot", ctr, "--", *argv]


def run_in(image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    with container(image) as ctr:
        return subprocess.run(
            run_argv(ctr, *argv), capture_output=True, text=True, timeout=120, check=False
        )


def test_operator_image_prints_its_version(images: dict[str, str]) -> None:
    res = run_in(images["operator"], "kubemeter", "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "kubemeter 0.1.0"


def test_operator_image_has_its_machinery(images: dict[str, str]) -> None:
    res = run_in(
        images["operator"],
        "python3",
        "-c",
        "import kopf, kubernetes, sqlalchemy, psycopg, kubemeter_operator.controller.handlers",
    )
    assert res.returncode == 0, res.stderr


def test_exporter_image_holds_no_operator_code_or_dependencies(images: dict[str, str]) -> None:
    probe = (
        "import importlib.util as u\n"
        "print(sorted(m for m in ('kopf', 'kubernetes', 'sqlalchemy', 'psycopg', "
        "'kubemeter_operator') if u.find_spec(m)))\n"
        "import kopf\n"
    )
    res = run_in(images["exporter"], "python3", "-c", probe)
    assert res.stdout.strip() == "[]", res.stdout
    assert res.returncode != 0
    assert "ModuleNotFoundError: No module named 'kopf'" in res.stderr


def test_exporter_image_cli_answers_help_and_version(images: dict[str, str]) -> None:
    with container(images["exporter"]) as ctr:
        helped = subprocess.run(
            run_argv(ctr, "kubemeter-exporter", "--help"), capture_output=True, text=True
        )
        version = subprocess.run(
            run_argv(ctr, "kubemeter-exporter", "--version"), capture_output=True, text=True
        )
    assert helped.returncode == 0, helped.stderr
    assert "--simulate" in helped.stdout
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "kubemeter-exporter 0.1.0"


@pytest.mark.parametrize("target", ["operator", "exporter"])
def test_image_runs_as_uid_10001_without_writing_bytecode(
    images: dict[str, str], target: str
) -> None:
    inspect = _buildah(
        "inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", images[target]
    )
    assert inspect.stdout.strip() == f"{UID}:{UID}"
    probe = (
        "import os, sys, importlib.util as u; "
        "print(os.getuid(), os.getgid(), os.environ.get('PYTHONDONTWRITEBYTECODE'), "
        "sys.dont_write_bytecode, os.environ['HOME'], sys.prefix, bool(u.find_spec('pip')))"
    )
    res = run_in(images[target], "python3", "-c", probe)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [
        str(UID),
        str(UID),
        "1",
        "True",
        "/home/kubemeter",
        "/opt/kubemeter",
        "False",
    ]


BUILD_LEFTOVERS = (
    "root/.cache/pip",
    "home/kubemeter/.cache",
    "opt/build",  # pip and hatchling of the build stage
    "opt/kubemeter/bin/pip",
    "src",
    "wheels",
)


@pytest.mark.parametrize("target", ["operator", "exporter"])
def test_image_holds_no_pip_cache_and_no_build_tools(images: dict[str, str], target: str) -> None:
    with container(images[target]) as ctr:
        mounted = _buildah("mount", ctr)
        assert mounted.returncode == 0, mounted.stderr
        root = Path(mounted.stdout.strip())
        try:
            assert (root / "opt/kubemeter/bin/python").exists()
            present = [p for p in BUILD_LEFTOVERS if (root / p).exists()]
            apt_lists = list((root / "var/lib/apt/lists").glob("*_dists_*"))
        finally:
            _buildah("umount", ctr)
    assert present == []
    assert apt_lists == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exporter_pids(port: int) -> list[int]:
    """The processes of the exporter run in the container (not buildah's own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"bin/buildah") or a == b"buildah" for a in argv[:1]):
            continue
        if b"--simulate" in argv and f"127.0.0.1:{port}".encode() in argv:
            pids.append(int(entry.name))
    return pids


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_exporter_image_serves_metrics_in_simulation_as_uid_10001(
    images: dict[str, str],
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    argv = [
        "kubemeter-exporter",
        "--simulate",
        SCENARIO,
        "--listen",
        f"127.0.0.1:{port}",
        "--interval",
        "200ms",
        "--speed",
        "20",
    ]
    with container(images["exporter"]) as ctr:
        proc = subprocess.Popen(
            run_argv(ctr, *argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        pids: list[int] = []
        try:
            allocated: dict[str, float] = {}
            exporter_info: dict[str, str] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not allocated:
                assert proc.poll() is None, proc.communicate()[0].decode()
                try:
                    body = urllib.request.urlopen(url, timeout=5).read().decode()
                except OSError:
                    time.sleep(0.3)
                    continue
                for fam in text_string_to_metric_families(body):
                    for s in fam.samples:
                        if s.name == c.GPU_ALLOCATED_MS.name and s.labels[c.LABEL_POD] and s.value:
                            allocated[f"{s.labels[c.LABEL_NAMESPACE]}/{s.labels[c.LABEL_POD]}"] = (
                                s.value
                            )
                        if s.name == c.EXPORTER_INFO.name:
                            exporter_info = dict(s.labels)
                time.sleep(0.3)
            assert "team-a/trainer-0" in allocated, f"no allocated time in {url}"
            assert exporter_info.get(c.LABEL_BACKEND) == "simulated"
            assert exporter_info.get(c.LABEL_VERSION) == "0.1.0"
            pids = _exporter_pids(port)
            assert pids, "the exporter's process is not visible in /proc"
            assert {_uid(pid) for pid in pids} == {UID}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out = proc.communicate(timeout=20)[0].decode()
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0].decode()
            for pid in pids:  # what buildah left running (it should leave nothing)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert "serving http://127.0.0.1" in out, out
    assert _exporter_pids(port) == []
