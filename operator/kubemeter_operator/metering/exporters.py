"""Which scrape targets are kubemeter exporters, and on which node each one runs.

GPU series count only when the target that produced them is an exporter pod on the node the
series names (see :mod:`kubemeter_operator.metering.trust`). This module keeps the map a
target's ``instance`` label (``<pod IP>:<port>``, what the exporter scrape job's relabelling
writes) -> the exporter pod's node:

* :class:`ExporterDirectory` (pure, thread-safe): the map itself, fed with
  :class:`ExporterPod` values. Pods that are no longer listed stay resolvable for
  ``retention_s`` (default 2 h), so the last samples of an exporter pod that was just
  replaced (a rollout) still count in the windows that read them.
* :class:`ExporterWatch`: a periodic list (every ``period_s``, default 30 s) of the exporter
  pods only (full objects, label-selected, one namespace: a handful of pods, one per GPU
  node), plus a list on demand when the cycle meets an instance it does not know (a new
  exporter pod), at most every ``min_refresh_s``. The metadata-only pod watch
  (:mod:`~kubemeter_operator.metering.podwatch`) has no IPs or nodes, hence this small
  separate one.

An exporter pod is matched by IP *and* port when it declares container ports (the chart's
``metrics`` port), by IP alone when it declares none. Only pods in the exporter namespace
that match the exporter selector are ever listed: whoever can create those already runs the
exporter. This module never decides trust itself and never touches the ledger.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubemeter_operator.errors import TransientError

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 7200.0
DEFAULT_PERIOD_S = 30.0
DEFAULT_MIN_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class ExporterPod:
    """One exporter pod: where it runs and the addresses it serves."""

    name: str
    node: str
    ips: tuple[str, ...]
    ports: tuple[int, ...] = ()
    """Declared TCP container ports; empty: any port of its IPs."""


def pod_of(obj: Mapping[str, Any]) -> ExporterPod | None:
    """The exporter pod of a full Pod object (None while it has no node or no IP yet)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    node = str(spec.get("nodeName") or "")
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if status.get("podIP") and str(status["podIP"]) not in ips:
        ips.insert(0, str(status["podIP"]))
    if not node or not ips:
        return None
    ports = sorted(
        {
            int(p["containerPort"])
            for c in spec.get("containers") or []
            for p in c.get("ports") or []
            if p.get("containerPort") and (p.get("protocol") or "TCP") == "TCP"
        }
    )
    return ExporterPod(str(meta.get("name", "")), node, tuple(ips), tuple(ports))


def split_instance(instance: str) -> tuple[str, int | None]:
    """``10.0.0.1:9400`` -> (``10.0.0.1``, 9400); ``[fd00::1]:9400`` -> (``fd00::1``, 9400);
    no port -> (host, None)."""
    if instance.startswith("["):
        host, _, rest = instance[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif instance.count(":") == 1:
        host, _, port = instance.partition(":")
    else:  # a bare IPv4 or IPv6 address
        host, port = instance, ""
    return host, int(port) if port.isdigit() else None


class ExporterDirectory:
    """``instance`` -> node of the exporter pod that serves it. Thread-safe.

    ``refresher``: called by :meth:`refresh` (the watch lists the pods again; returns whether
    it did). Without one, :meth:`refresh` does nothing.
    """

    def __init__(
        self,
        pods: Iterable[ExporterPod] = (),
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.monotonic,
        refresher: Callable[[], bool] | None = None,
    ) -> None:
        self.retention_s = retention_s
        self._clock = clock
        self.refresher = refresher
        self._lock = threading.Lock()
        self._current: dict[str, ExporterPod] = {}
        self._departed: dict[str, tuple[ExporterPod, float]] = {}
        self._by_port: dict[tuple[str, int], str] = {}
        self._by_ip: dict[str, str] = {}
        self.replace(pods)

    def replace(self, pods: Iterable[ExporterPod]) -> None:
        """The exporter pods listed now; pods listed before and missing now are kept as
        departed for ``retention_s``."""
        now = self._clock()
        fresh = {p.name: p for p in pods}
        with self._lock:
            for name, pod in self._current.items():
                if name not in fresh:
                    self._departed[name] = (pod, now)
            for name in fresh:
                self._departed.pop(name, None)
            cutoff = now - self.retention_s
            self._departed = {n: v for n, v in self._departed.items() if v[1] > cutoff}
            self._current = fresh
            by_port: dict[tuple[str, int], str] = {}
            by_ip: dict[str, str] = {}
            # departed first: a current pod on the same address wins
            ordered = [p for p, _ in self._departed.values()] + list(fresh.values())
            for pod in ordered:
                for ip in pod.ips:
                    if pod.ports:
                        for port in pod.ports:
                            by_port[(ip, port)] = pod.node
                    else:
                        by_ip[ip] = pod.node
            self._by_port, self._by_ip = by_port, by_ip

    def node_of(self, instance: str) -> str | None:
        """The node of the exporter pod serving ``instance``; None when it is none's."""
        host, port = split_instance(instance)
        with self._lock:
            if port is not None:
                node = self._by_port.get((host, port))
                if node is not None:
                    return node
            return self._by_ip.get(host)

    def lookup(self, instances: Iterable[str]) -> dict[str, str]:
        """The known ones of ``instances`` -> node."""
        out: dict[str, str] = {}
        for instance in instances:
            node = self.node_of(instance)
            if node is not None:
                out[instance] = node
        return out

    def refresh(self) -> bool:
        """Ask for a fresh list now (an unknown instance was met); True if one was made."""
        return self.refresher() if self.refresher is not None else False

    def __len__(self) -> int:
        with self._lock:
            return len(self._current)


class ExporterWatch:
    """Keeps an ExporterDirectory current by listing the exporter pods periodically."""

    def __init__(
        self,
        api_client: Any,
        directory: ExporterDirectory,
        *,
        namespace: str,
        selector: str,
        period_s: float = DEFAULT_PERIOD_S,
        min_refresh_s: float = DEFAULT_MIN_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.directory = directory
        self.namespace = namespace
        self.selector = selector
        self.period_s = period_s
        self.min_refresh_s = min_refresh_s
        self._clock = clock
        self._listed_at: float | None = None
        self._list_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        directory.refresher = self.refresh

    def list(self) -> int:
        """List the exporter pods now; returns how many have an IP and a node."""
        with self._list_lock:
            try:
                resp: Any = self._core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _preload_content=False
                )
                items = json.loads(resp.data).get("items") or []
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                raise TransientError(f"list exporter pods: {exc}") from exc
            pods = [p for p in (pod_of(item) for item in items) if p is not None]
            self.directory.replace(pods)
            self._listed_at = self._clock()
            return len(pods)

    def refresh(self) -> bool:
        """List again unless that was done within ``min_refresh_s`` (errors are logged)."""
        at = self._listed_at
        if at is not None and self._clock() - at < self.min_refresh_s:
            return False
        try:
            self.list()
        except TransientError as exc:
            log.warning("exporter pods not listed: %s", exc)
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exporter-pods", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.list()
            except Exception as exc:  # keep listing whatever happens; stop() ends it
                log.warning("exporter pods not listed (retry in %.0fs): %s", self.period_s, exc)


def start_exporter_watch(
    api_client: Any,
    *,
    namespace: str,
    selector: str,
    retention_s: float = DEFAULT_RETENTION_S,
) -> ExporterWatch:
    """List the exporter pods now (blocking; TransientError if the API server cannot be
    reached), then list them again every 30 s in a thread."""
    watch = ExporterWatch(
        api_client,
        ExporterDirectory(retention_s=retention_s),
        namespace=namespace,
        selector=selector,
    )
    count = watch.list()
    log.info("exporter pods in %s (%s): %d", namespace, selector, count)
    watch.start()
    return watch
