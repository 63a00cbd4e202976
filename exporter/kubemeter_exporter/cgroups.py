"""Pod UID (and container ID) of a process from ``/proc/<pid>/cgroup``.

Handles cgroup v1 and v2, the systemd and cgroupfs drivers, and containerd, CRI-O and
docker naming, e.g.::

    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    12:memory:/kubepods/burstable/pod<uid>/<id>
    11:devices:/kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
# "pod<uid>" preceded by "/" (cgroupfs) or "-" (systemd slice); static pods use 32 hex digits.
_POD_RE = re.compile(r"(?:^|[/-])pod(" + _UID + r"|[0-9a-fA-F]{32})(?:\.slice)?(?=[/:]|$)")
_CONTAINER_RE = re.compile(
    r"(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$"
)


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    pod_uid: str
    container_id: str | None


def parse_cgroup(text: str) -> CgroupIdentity | None:
    """Return the pod UID (dashed form) and container ID found in a cgroup file."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        m = _POD_RE.search(path)
        if not m:
            continue
        uid = m.group(1).replace("_", "-").lower()
        last = path.rstrip("/").rsplit("/", 1)[-1]
        cm = _CONTAINER_RE.search(last)
        return CgroupIdentity(pod_uid=uid, container_id=cm.group(1) if cm else None)
    return None


class ProcCgroupReader:
    """Reads ``<proc_root>/<pid>/cgroup`` with a per-PID cache.

    A PID's entry is kept while the PID stays in the GPU process list; ``retain`` drops
    entries of PIDs that disappeared, so a reused PID is read again.
    """

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._cache: dict[int, CgroupIdentity | None] = {}
        self.read_errors = 0

    def lookup(self, pid: int) -> CgroupIdentity | None:
        try:
            return self._cache[pid]
        except KeyError:
            pass
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text(encoding="utf-8")
        except OSError:
            self.read_errors += 1
            # Not cached: the process may be too new for /proc or already gone.
            return None
        ident = parse_cgroup(text)
        self._cache[pid] = ident
        return ident

    def retain(self, live_pids: set[int]) -> None:
        for pid in [p for p in self._cache if p not in live_pids]:
            del self._cache[pid]

    def invalidate(self, pid: int) -> None:
        self._cache.pop(pid, None)


def cgroup_text(
    pod_uid: str,
    container_id: str,
    *,
    style: str,
    runtime: str = "containerd",
    qos: str = "burstable",
) -> str:
    """Render a realistic /proc/<pid>/cgroup file (used by the simulator and tests)."""
    us = pod_uid.replace("-", "_")
    prefix = {"containerd": "cri-containerd-", "crio": "crio-", "docker": "docker-"}[runtime]
    if style in ("systemd-v1", "systemd-v2"):
        if qos == "guaranteed":
            path = f"/kubepods.slice/kubepods-pod{us}.slice/{prefix}{container_id}.scope"
        else:
            path = (
                f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{us}.slice/"
                f"{prefix}{container_id}.scope"
            )
    else:
        qos_part = "" if qos == "guaranteed" else f"/{qos}"
        path = f"/kubepods{qos_part}/pod{pod_uid}/{container_id}"
    if style.endswith("v2"):
        return f"0::{path}\n"
    return (
        f"12:pids:{path}\n11:memory:{path}\n10:devices:{path}\n"
        f"4:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::/\n"
    )
