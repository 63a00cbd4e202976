"""The static pod source the simulated node describes its pods with."""

from __future__ import annotations

from kubemeter_exporter.pods import PodInfo, StaticPodSource


def test_static_pods_by_uid_and_name() -> None:
    src = StaticPodSource([PodInfo("a", "p1", "u1", {"team": "x"})])
    assert src.get_by_uid("u1") == PodInfo("a", "p1", "u1", {"team": "x"})
    assert src.get_by_name("a", "p1") is not None
    # Same name, new UID (a StatefulSet pod recreated): the name finds the new pod.
    src.put(PodInfo("a", "p1", "u2"))
    assert src.get_by_name("a", "p1") == PodInfo("a", "p1", "u2")
    src.remove("u1")  # the old UID no longer owns the name: the name stays
    assert src.get_by_name("a", "p1") is not None
    src.remove("u2")
    assert src.get_by_name("a", "p1") is None
    assert len(src) == 0
