"""PodBinder: pod-resources entries (names) joined to cgroup pod UIDs by where they are."""

from __future__ import annotations

from kubemeter_exporter.binding import PodBinder

A, B, C = "GPU-a", "GPU-b", "GPU-c"
P1, P2, P3 = ("ns1", "p1"), ("ns2", "p2"), ("ns3", "p3")


def fs(*devs: str) -> frozenset[str]:
    return frozenset(devs)


def test_whole_gpus_bind_at_first_sight() -> None:
    b = PodBinder()
    b.update({P1: fs(A), P2: fs(B, C)}, {"u1": fs(A), "u2": fs(B)})
    assert b.bindings() == {"u1": P1, "u2": P2}
    assert b.uid_of(P2) == "u2"
    assert not b.ambiguous


def test_uid_on_no_held_device_is_free() -> None:
    # u9 runs on every GPU (NVIDIA_VISIBLE_DEVICES=all): no single pod holds all of them.
    b = PodBinder()
    b.update({P1: fs(A), P2: fs(B)}, {"u1": fs(A), "u2": fs(B), "u9": fs(A, B, C)})
    assert b.pod_of("u9") is None
    assert "u9" not in b.ambiguous
    assert b.bindings() == {"u1": P1, "u2": P2}


def test_shared_gpu_bindings_are_learnt_one_pod_at_a_time() -> None:
    b = PodBinder()
    b.update({P1: fs(A)}, {"u1": fs(A)})
    # p2 joins the GPU (time-slicing); p1's UID is known, so p2's is the only one left.
    b.update({P1: fs(A), P2: fs(A)}, {"u1": fs(A), "u2": fs(A)})
    assert b.bindings() == {"u1": P1, "u2": P2}


def test_shared_gpu_seen_together_is_ambiguous_until_told_apart() -> None:
    b = PodBinder()
    both = {P1: fs(A), P2: fs(A)}
    b.update(both, {"u1": fs(A), "u2": fs(A)})
    assert b.bindings() == {}
    assert b.ambiguous == {"u1", "u2"}
    # p1 leaves: u2 is the only UID left on a GPU that only p2 holds.
    b.update({P2: fs(A)}, {"u2": fs(A)})
    assert b.bindings() == {"u2": P2}
    assert not b.ambiguous


def test_elimination_chains() -> None:
    # u2 can only be p2 (it runs on B); then u1's candidates {p1, p2} shrink to p1.
    b = PodBinder()
    b.update({P1: fs(A), P2: fs(A, B)}, {"u1": fs(A), "u2": fs(B)})
    assert b.bindings() == {"u1": P1, "u2": P2}


def test_two_uids_claiming_one_pod_bind_neither() -> None:
    # The pod's process and an intruder appear together on the pod's only GPU.
    b = PodBinder()
    b.update({P1: fs(A)}, {"u1": fs(A), "ux": fs(A)})
    assert b.bindings() == {}
    assert b.ambiguous == {"u1", "ux"}


def test_intruder_after_the_owner_is_free() -> None:
    b = PodBinder()
    b.update({P1: fs(A)}, {"u1": fs(A)})
    b.update({P1: fs(A)}, {"u1": fs(A), "ux": fs(A)})
    assert b.bindings() == {"u1": P1}
    assert "ux" not in b.ambiguous


def test_binding_forgotten_when_the_pod_goes_or_is_contradicted() -> None:
    b = PodBinder()
    b.update({P1: fs(A)}, {"u1": fs(A)})
    b.update({P1: fs(A)}, {})  # no process this round: the binding stays
    assert b.uid_of(P1) == "u1"
    # Recreated under the same name: pod-resources drops it, then lists it again.
    b.update({}, {})
    assert b.uid_of(P1) == ""
    b.update({P1: fs(A)}, {"u1-new": fs(A)})
    assert b.uid_of(P1) == "u1-new"
    # The UID now runs where its pod holds nothing: not that pod after all.
    b.update({P1: fs(A), P3: fs(C)}, {"u1-new": fs(B)})
    assert b.pod_of("u1-new") is None


def test_unreadable_kubelet_changes_nothing() -> None:
    b = PodBinder()
    b.update({P1: fs(A), P2: fs(A)}, {"u1": fs(A)})
    assert b.uid_of(P1) == ""  # u1 may be p1 or p2
    assert b.ambiguous == {"u1"}
    b.update(None, {"u1": fs(A), "u2": fs(A)})
    assert b.bindings() == {}
    assert not b.ambiguous  # nothing is billed by name, so billing by UID counts nothing twice
    b2 = PodBinder()
    b2.update({P1: fs(A)}, {"u1": fs(A)})
    b2.update(None, {"u1": fs(B)})
    assert b2.uid_of(P1) == "u1"  # kept until the kubelet answers again


def test_same_evidence_same_answer() -> None:
    b = PodBinder()
    ev = ({P1: fs(A), P2: fs(A)}, {"u1": fs(A), "u2": fs(A)})
    b.update(*ev)
    first = (b.bindings(), b.ambiguous)
    b.update(*ev)
    assert (b.bindings(), b.ambiguous) == first
