"""Pod metadata the metering cycle needs: namespace, name, uid and labels.

The handler layer fills a :class:`PodRegistry` from a pod watch (``upsert`` on add/modify,
``delete`` on delete). Deleted pods stay resolvable for ``retention_s`` (default 2 h), so
usage read after a pod is gone (the last window, a backfill after an outage) still goes to
the tenant its labels select. Tests use :class:`StaticPodDirectory`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PodMeta:
    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


class PodDirectory(Protocol):
    """Resolves a pod to its metadata; ``None`` when unknown."""

    def lookup(self, namespace: str, name: str, uid: str = "") -> PodMeta | None:
        """By uid when given and known, else by namespace/name."""
        ...


class StaticPodDirectory:
    """A fixed set of pods (tests, the benchmark)."""

    def __init__(self, pods: Iterable[PodMeta] = ()) -> None:
        self._by_uid: dict[str, PodMeta] = {}
        self._by_name: dict[tuple[str, str], PodMeta] = {}
        for pod in pods:
            self.add(pod)

    def add(self, pod: PodMeta) -> None:
        if pod.uid:
            self._by_uid[pod.uid] = pod
        self._by_name[(pod.namespace, pod.name)] = pod

    def lookup(self, namespace: str, name: str, uid: str = "") -> PodMeta | None:
        if uid and uid in self._by_uid:
            return self._by_uid[uid]
        return self._by_name.get((namespace, name))


class PodRegistry:
    """A thread-safe directory fed by a pod watch; deleted pods linger for ``retention_s``."""

    def __init__(
        self, retention_s: float = 7200.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_uid: dict[str, PodMeta] = {}
        self._by_name: dict[tuple[str, str], PodMeta] = {}
        self._deleted: dict[str, float] = {}

    def upsert(self, pod: PodMeta) -> None:
        with self._lock:
            if pod.uid:
                self._by_uid[pod.uid] = pod
                self._deleted.pop(pod.uid, None)
            self._by_name[(pod.namespace, pod.name)] = pod

    def delete(self, pod: PodMeta) -> None:
        """Mark deleted; it stays resolvable until ``retention_s`` has passed."""
        with self._lock:
            key = pod.uid or f"{pod.namespace}/{pod.name}"
            if not pod.uid:
                self._by_name[(pod.namespace, pod.name)] = pod
                self._by_uid.setdefault(key, pod)
            self._deleted[key] = self._clock()
            self._expire_locked()

    def forget_missing(self, present_uids: set[str]) -> None:
        """After a fresh list: pods not in it were deleted while nobody watched."""
        with self._lock:
            gone = [p for uid, p in self._by_uid.items() if uid not in present_uids]
        for pod in gone:
            if pod.uid not in self._deleted:
                self.delete(pod)

    def lookup(self, namespace: str, name: str, uid: str = "") -> PodMeta | None:
        with self._lock:
            if uid and uid in self._by_uid:
                return self._by_uid[uid]
            return self._by_name.get((namespace, name))

    def expire(self) -> None:
        with self._lock:
            self._expire_locked()

    def _expire_locked(self) -> None:
        cutoff = self._clock() - self.retention_s
        for key, at in list(self._deleted.items()):
            if at > cutoff:
                continue
            del self._deleted[key]
            pod = self._by_uid.pop(key, None)
            if pod is not None and self._by_name.get((pod.namespace, pod.name)) is pod:
                del self._by_name[(pod.namespace, pod.name)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)
