"""Pod metadata for attribution: a metadata-only list + watch of every pod.

The operator needs only namespace, name, uid and labels of pods, for thousands of them. It
asks the API server for `PartialObjectMetadata` (no spec, no status), pages the initial
list, and keeps the registry current from a watch in a thread of its own: a few hundred
bytes per pod instead of a full object, and no per-pod handler machinery.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kubemeter_operator.errors import TransientError
from kubemeter_operator.metering.pods import PodMeta, PodRegistry

log = logging.getLogger(__name__)

_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
PAGE_SIZE = 500
WATCH_TIMEOUT_S = 300


def meta_of(obj: dict[str, Any]) -> PodMeta:
    meta = obj.get("metadata") or {}
    return PodMeta(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
    )


class _GoneError(Exception):
    """The watch's resourceVersion is too old: list again."""


class PodMetadataWatch:
    """Fills a PodRegistry from the API server and keeps it current."""

    def __init__(self, api_client: Any, registry: PodRegistry) -> None:
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.registry = registry
        self.resource_version = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None

    def list(self) -> int:
        """(Re)list every pod, page by page; returns how many. Pods gone since the last
        list are marked deleted (they stay resolvable for the registry's retention)."""
        seen: set[str] = set()
        token: str | None = None
        try:
            while True:
                resp: Any = self._core.list_pod_for_all_namespaces(
                    limit=PAGE_SIZE,
                    _continue=token,
                    _preload_content=False,
                    _headers={"Accept": _LIST_ACCEPT},
                )
                page = json.loads(resp.data)
                for item in page.get("items") or []:
                    pod = meta_of(item)
                    self.registry.upsert(pod)
                    seen.add(pod.uid)
                token = page.get("metadata", {}).get("continue") or None
                if token is None:
                    self.resource_version = page["metadata"]["resourceVersion"]
                    break
        except (ApiException, urllib3.exceptions.HTTPError, OSError, KeyError) as exc:
            raise TransientError(f"list pods: {exc}") from exc
        self.registry.forget_missing(seen)
        return len(seen)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pod-metadata-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                for kind, obj in self._events():
                    backoff = 0.5
                    self._apply(kind, obj)
            except _GoneError:
                log.info("pod watch expired; listing pods again")
                self._relist()
            except Exception as exc:  # the watch must survive anything; stop() closes it
                if self._stop.is_set():
                    return
                log.warning("pod watch failed (retry in %.1fs): %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                if isinstance(exc, ApiException) and exc.status == 410:
                    self._relist()

    def _relist(self) -> None:
        try:
            self.list()
        except TransientError as exc:
            log.warning("pod list failed: %s", exc)
            time.sleep(1)

    def _events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        self._response = self._core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
            _headers={"Accept": _WATCH_ACCEPT},
        )
        try:
            for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _GoneError
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = version
                if kind != "BOOKMARK":
                    yield kind, obj
        finally:
            response, self._response = self._response, None
            if response is not None:
                response.release_conn()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        pod = meta_of(obj)
        if kind == "DELETED":
            self.registry.delete(pod)
        else:
            self.registry.upsert(pod)


def start_pod_watch(
    api_client: Any, registry: PodRegistry, on_listed: Callable[[int], None] | None = None
) -> PodMetadataWatch:
    """List all pods now (blocking), then keep watching in a thread."""
    watch = PodMetadataWatch(api_client, registry)
    count = watch.list()
    if on_listed is not None:
        on_listed(count)
    watch.start()
    return watch
