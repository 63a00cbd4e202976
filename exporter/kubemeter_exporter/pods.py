"""Pod metadata for attribution: a node-restricted cache kept current with a watch.

The exporter reads pods on its own node only (``spec.nodeName`` field selector); RBAC
needs ``get/list/watch pods`` and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PodSource(Protocol):
    def get_by_uid(self, uid: str) -> PodInfo | None: ...

    def get_by_name(self, namespace: str, name: str) -> PodInfo | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def errors(self) -> int: ...


class StaticPodSource:
    """A fixed set of pods (simulation, tests)."""

    def __init__(self, pods: Iterable[PodInfo] = ()) -> None:
        self._by_uid: dict[str, PodInfo] = {}
        self._by_name: dict[tuple[str, str], PodInfo] = {}
        for p in pods:
            self.put(p)

    def put(self, pod: PodInfo) -> None:
        self._by_uid[pod.uid] = pod
        self._by_name[(pod.namespace, pod.name)] = pod

    def remove(self, uid: str) -> None:
        pod = self._by_uid.pop(uid, None)
        if pod is not None and self._by_name.get((pod.namespace, pod.name)) is pod:
            del self._by_name[(pod.namespace, pod.name)]

    def get_by_uid(self, uid: str) -> PodInfo | None:
        return self._by_uid.get(uid)

    def get_by_name(self, namespace: str, name: str) -> PodInfo | None:
        return self._by_name.get((namespace, name))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def errors(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._by_uid)


def pod_from_api(obj: Any) -> PodInfo:
    """Build a PodInfo from a kubernetes client V1Pod (or a dict shaped like one)."""
    if isinstance(obj, dict):
        md = obj.get("metadata") or {}
        return PodInfo(
            namespace=md.get("namespace", ""),
            name=md.get("name", ""),
            uid=md.get("uid", ""),
            labels=dict(md.get("labels") or {}),
        )
    md = obj.metadata
    return PodInfo(
        namespace=md.namespace or "",
        name=md.name or "",
        uid=md.uid or "",
        labels=dict(md.labels or {}),
    )


class KubePodSource(StaticPodSource):
    """List + watch of the pods on ``node_name`` through the ``kubernetes`` client.

    ``api`` is a ``kubernetes.client.CoreV1Api``; the watch runs in a daemon thread,
    relists on ``410 Gone`` and on errors (with backoff), and never raises to the caller.
    """

    def __init__(
        self,
        api: Any,
        node_name: str | None,
        *,
        watch_timeout_s: int = 300,
        backoff_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.api = api
        self.node_name = node_name
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self._errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()

    @property
    def errors(self) -> int:
        return self._errors

    def _selector(self) -> dict[str, Any]:
        return {"field_selector": f"spec.nodeName={self.node_name}"} if self.node_name else {}

    def get_by_uid(self, uid: str) -> PodInfo | None:
        with self._lock:
            return super().get_by_uid(uid)

    def get_by_name(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return super().get_by_name(namespace, name)

    def relist(self) -> str:
        """Replace the cache with a fresh list; returns the list's resourceVersion."""
        resp = self.api.list_pod_for_all_namespaces(**self._selector())
        pods = [pod_from_api(p) for p in resp.items]
        with self._lock:
            self._by_uid.clear()
            self._by_name.clear()
            for p in pods:
                self.put(p)
        self.synced.set()
        return str(resp.metadata.resource_version or "")

    def apply_event(self, event: Mapping[str, Any]) -> str | None:
        """Apply one watch event; returns its resourceVersion (None for unusable events)."""
        etype = event.get("type")
        obj = event.get("object")
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else getattr(obj, "code", None)
            raise _WatchExpiredError(f"watch error {code}")
        if obj is None:
            return None
        rv = (
            (obj.get("metadata") or {}).get("resourceVersion")
            if isinstance(obj, dict)
            else getattr(obj.metadata, "resource_version", None)
        )
        if etype == "BOOKMARK":
            return str(rv) if rv else None
        pod = pod_from_api(obj)
        with self._lock:
            if etype == "DELETED":
                self.remove(pod.uid)
            elif etype in ("ADDED", "MODIFIED"):
                old = self._by_name.get((pod.namespace, pod.name))
                if old is not None and old.uid != pod.uid:
                    self.remove(old.uid)
                self.put(pod)
        return str(rv) if rv else None

    def run_once(self) -> None:
        """One list + watch cycle (returns when the watch ends)."""
        from kubernetes import watch

        rv = self.relist()
        w = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in w.stream(  # type: ignore[no-untyped-call]
                self.api.list_pod_for_all_namespaces,
                resource_version=rv,
                timeout_seconds=self.watch_timeout_s,
                allow_watch_bookmarks=True,
                **self._selector(),
            ):
                if self._stop.is_set():
                    break
                new_rv = self.apply_event(event)
                if new_rv:
                    rv = new_rv
        finally:
            w.stop()  # type: ignore[no-untyped-call]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except _WatchExpiredError as exc:
                log.info("pod watch restarting: %s", exc)
            except Exception as exc:
                if getattr(exc, "status", None) == 410:  # resourceVersion too old: relist
                    log.info("pod watch expired; relisting")
                    continue
                self._errors += 1
                log.warning("pod list/watch failed (will retry): %s", exc)
                self._stop.wait(self.backoff_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pod-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class _WatchExpiredError(Exception):
    pass


def kube_pod_source(node_name: str | None, kubeconfig: str | None) -> KubePodSource:
    """Create a KubePodSource from a kubeconfig file or the in-cluster service account."""
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    return KubePodSource(client.CoreV1Api(), node_name)
