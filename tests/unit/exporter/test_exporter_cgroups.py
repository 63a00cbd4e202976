"""Pod UID from /proc/<pid>/cgroup across cgroup versions, drivers and runtimes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubemeter_exporter.cgroups import CgroupIdentity, ProcCgroupReader, cgroup_text, parse_cgroup

UID = "0a1b2c3d-1111-4222-8333-444455556666"
CID = "ab" * 32

REAL_WORLD = [
    # cgroup v2, systemd driver, containerd
    "0::/kubepods.slice/kubepods-burstable.slice/"
    "kubepods-burstable-pod0a1b2c3d_1111_4222_8333_444455556666.slice/"
    f"cri-containerd-{CID}.scope\n",
    # cgroup v2, systemd driver, CRI-O, guaranteed QoS
    f"0::/kubepods.slice/kubepods-pod0a1b2c3d_1111_4222_8333_444455556666.slice/crio-{CID}.scope\n",
    # cgroup v1, cgroupfs driver, containerd
    f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
    f"11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n",
    # cgroup v1, systemd driver, docker
    "1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod0a1b2c3d_1111_4222_8333_444455556666.slice/docker-{CID}.scope\n",
    # cgroup v2, cgroupfs driver
    f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    # kind / nested: a prefix before kubepods
    "0::/system.slice/containerd.service/"
    f"kubepods-burstable-pod{UID.replace('-', '_')}.slice:cri-containerd:{CID}\n",
]


@pytest.mark.parametrize("text", REAL_WORLD)
def test_real_world_layouts(text: str) -> None:
    ident = parse_cgroup(text)
    assert ident is not None
    assert ident.pod_uid == UID


@pytest.mark.parametrize("style", ["cgroupfs-v1", "systemd-v1", "cgroupfs-v2", "systemd-v2"])
@pytest.mark.parametrize("runtime", ["containerd", "crio", "docker"])
@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
def test_generated_layouts_round_trip(style: str, runtime: str, qos: str) -> None:
    text = cgroup_text(UID, CID, style=style, runtime=runtime, qos=qos)
    assert parse_cgroup(text) == CgroupIdentity(UID, CID)


def test_static_pod_uid_and_non_pod_processes() -> None:
    static = "0a1b2c3d11114222833344445555abcd"
    assert parse_cgroup(f"0::/kubepods/burstable/pod{static}/{CID}\n") == CgroupIdentity(
        static, CID
    )
    assert parse_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert parse_cgroup("0::/system.slice/podman.service\n") is None
    assert parse_cgroup("") is None


def test_reader_cache_and_retain(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    f = tmp_path / "42" / "cgroup"
    f.write_text(cgroup_text(UID, CID, style="systemd-v2"))
    r = ProcCgroupReader(tmp_path)
    assert r.lookup(42) == CgroupIdentity(UID, CID)
    f.write_text("0::/\n")
    assert r.lookup(42) == CgroupIdentity(UID, CID)  # cached while the PID lives
    r.retain({7})
    assert r.lookup(42) is None  # re-read after the PID disappeared (PID reuse)
    assert r.lookup(43) is None
    assert r.read_errors == 1
