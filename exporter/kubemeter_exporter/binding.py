"""Which pod-resources entry a pod UID from the cgroups belongs to, with no Kubernetes API.

The exporter has two views of the pods on its node and nothing that links them:

* the kubelet's pod-resources API names the pods that hold devices (namespace, name,
  container, device ids; the v1 API carries no pod UID), and
* ``/proc/<pid>/cgroup`` gives each GPU process's pod UID (and no name).

``PodBinder`` infers the link from where each side is, and only where the evidence leaves
exactly one answer. The rules, applied once per sampling round:

1. A pod's processes run only on devices the pod holds (the device plugin exposes no
   others), so the *candidates* of a UID whose processes run on the device set ``S`` are the
   unbound pods that hold every device in ``S``.
2. A UID whose only candidate is pod ``P`` is bound to ``P``, unless another unbound UID
   also has ``P`` as its only candidate (then neither is). A binding takes ``P`` and the UID
   out of everyone's candidates; repeat until nothing more binds.
3. A binding is kept while the pod holds devices (a pod keeps its UID for life): a UID
   learnt while its pod was alone on a GPU stays known when another pod joins the GPU. It is
   dropped when pod-resources no longer lists the pod (a pod recreated under the same name
   is a new pod and is learnt afresh), or when the UID runs on a device the pod does not hold.
4. An unbound UID without candidates is no pod that holds a device: a pod that reached the
   GPU without an allocation (``NVIDIA_VISIBLE_DEVICES=all``). It is *free*: the collector
   bills it by UID alone and the operator, which watches pod metadata, names it.
5. An unbound UID that still has candidates is *ambiguous*: it may be one of them, whose
   allocated time is already billed by name, so billing it by UID as well could count one
   pod twice. Its usage is not billed until it can be told apart (the collector counts its
   processes as unattributed). This is the case of several pods that share a GPU
   (time-slicing, MPS) and all hold it, unbound, when their processes appear: pods admitted
   together (they hold their replicas from admission, before their processes start), and
   every shared GPU after an exporter restart.

When pod-resources cannot be read, nothing is learnt or forgotten and no UID is ambiguous
(no pod is billed by name then, so billing by UID counts nothing twice).

What it cannot know, and what it does then:

* Pods sharing a GPU whose processes appear together (rule 5): allocated time is exact (by
  name), active time of those pods is not billed until their processes can be told apart.
* A pod that reached the GPU without an allocation, running alone on a GPU held by a pod
  that runs nothing yet, is taken for that pod (rule 2): the series carries the holder's
  name and the intruder's UID. Consumers that prefer the UID (the operator does) bill the
  intruder for the holder's allocation; once the holder's own processes start they are
  billed by UID alone (rule 4), so both pods pay for the GPU, as they did before.
* A pod whose processes also run on GPUs it holds no allocation on is not bound (rule 1);
  it is billed by name for what it holds and by UID for where it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set

log = logging.getLogger(__name__)

PodRef = tuple[str, str]  # namespace, name (as pod-resources reports them)
Devices = frozenset[str]  # accountable device UUIDs


class PodBinder:
    """UID <-> pod-resources entry bindings, kept across sampling rounds."""

    def __init__(self) -> None:
        self._pod_of: dict[str, PodRef] = {}
        self._uid_of: dict[PodRef, str] = {}
        self.ambiguous: frozenset[str] = frozenset()
        self._last: tuple[dict[PodRef, Devices] | None, dict[str, Devices]] | None = None

    def pod_of(self, uid: str) -> PodRef | None:
        return self._pod_of.get(uid)

    def uid_of(self, pod: PodRef) -> str:
        """The pod's UID, or "" while it is not known."""
        return self._uid_of.get(pod, "")

    def bindings(self) -> dict[str, PodRef]:
        return dict(self._pod_of)

    def update(
        self, holdings: Mapping[PodRef, Set[str]] | None, seen: Mapping[str, Set[str]]
    ) -> None:
        """One round: ``holdings`` = devices each listed pod holds (None: pod-resources
        unreadable; a listed pod may hold no device we see right now), ``seen`` = devices
        each pod UID has processes on."""
        if self._last is not None and self._last == (holdings, seen):
            return  # same evidence, same answer (the steady state)
        self._last = (
            {p: frozenset(d) for p, d in holdings.items()} if holdings is not None else None,
            {u: frozenset(d) for u, d in seen.items()},
        )
        if holdings is None:
            self.ambiguous = frozenset()
            return
        for pod, uid in list(self._uid_of.items()):
            held = holdings.get(pod)
            if held is None:
                self._unbind(uid, pod)  # the pod released its devices or is gone
            elif not seen.get(uid, held) <= held:
                log.info(
                    "pod %s/%s: UID %s runs on a device the pod does not hold; forgetting "
                    "the binding",
                    *pod,
                    uid,
                )
                self._unbind(uid, pod)
        free_pods = {p: d for p, d in holdings.items() if p not in self._uid_of}
        by_device: dict[str, set[PodRef]] = {}
        for p, devs in free_pods.items():
            for dev in devs:
                by_device.setdefault(dev, set()).add(p)
        free_uids = {u: d for u, d in seen.items() if u not in self._pod_of and d}
        candidates = {u: _candidates(d, by_device) for u, d in free_uids.items()}
        while True:
            claims: dict[PodRef, list[str]] = {}
            for u, cands in candidates.items():
                if len(cands) == 1:
                    claims.setdefault(next(iter(cands)), []).append(u)
            bound = [(us[0], p) for p, us in claims.items() if len(us) == 1]
            if not bound:
                break
            for u, p in bound:
                self._pod_of[u] = p
                self._uid_of[p] = u
                del candidates[u]
                for cands in candidates.values():
                    cands.discard(p)
        self.ambiguous = frozenset(u for u, cands in candidates.items() if cands)

    def _unbind(self, uid: str, pod: PodRef) -> None:
        del self._uid_of[pod]
        del self._pod_of[uid]


def _candidates(devices: Set[str], by_device: Mapping[str, set[PodRef]]) -> set[PodRef]:
    """The free pods that hold every device in ``devices``."""
    it = iter(devices)
    out = set(by_device.get(next(it), ()))
    for dev in it:
        if not out:
            break
        out &= by_device.get(dev, set())
    return out
