"""--simulate with --kubeconfig: scenario pods resolve by namespace/name to real pod UIDs
(the API server is stood in for by a StaticPodSource here)."""

from __future__ import annotations

from pathlib import Path

from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import ManualClock
from kubemeter_exporter.collector import Collector
from kubemeter_exporter.pods import PodInfo, StaticPodSource
from kubemeter_exporter.scenario import Scenario
from kubemeter_exporter.simulation import SimulatedNode

G = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
REAL_UID = "99999999-9999-4999-8999-999999999999"


def test_pods_are_attributed_once_they_exist(tmp_path: Path) -> None:
    sc = Scenario.model_validate(
        {
            "gpus": [{"uuid": G}],
            "pods": [
                {
                    "namespace": "a",
                    "name": "p",
                    "uid": "scenario-uid",
                    "allocations": [{"devices": [G]}],
                }
            ],
            "processes": [{"pid": 10, "pod": "a/p", "device": G, "sm_util": 40}],
        }
    )
    api = StaticPodSource()  # what the watch has seen so far: nothing

    def resolver(ns: str, name: str) -> str | None:
        pod = api.get_by_name(ns, name)
        return pod.uid if pod else None

    clock = ManualClock()
    node = SimulatedNode(sc, clock, proc_root=tmp_path / "proc", uid_resolver=resolver)
    col = Collector(
        node.backend,
        node.pod_resources,
        api,
        ProcCgroupReader(node.proc_root),
        node="n",
        clock=clock,
        require_known_pods=True,
    )
    for _ in range(3):
        col.sample()
        clock.advance(1)
    # Not attributed to any pod yet; the process is in the unattributed series.
    assert {k[1:] for k in col.series} == {("", "", "")}
    api.put(PodInfo("a", "p", REAL_UID))  # the pod appears in the API server
    for _ in range(4):
        col.sample()
        clock.advance(1)
    s = col.series[(G, "a", "p", REAL_UID)]
    # Billed from the first sample that sees it (right-point rule): 4 intervals of 1 s.
    assert (s.allocated_ms, s.active_ms) == (4000, 1600)
    assert REAL_UID in (tmp_path / "proc" / "10" / "cgroup").read_text().replace("_", "-")
