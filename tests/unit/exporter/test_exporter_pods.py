"""The node-restricted pod cache (mocked Kubernetes API; the real one is in integration)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from kubemeter_exporter.pods import KubePodSource, PodInfo, pod_from_api


def v1pod(ns: str, name: str, uid: str, rv: str = "1", labels: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(
            namespace=ns, name=name, uid=uid, labels=labels, resource_version=rv
        )
    )


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return SimpleNamespace(
            items=[v1pod("a", "p1", "u1", labels={"team": "x"})],
            metadata=SimpleNamespace(resource_version="10"),
        )


def test_relist_uses_node_field_selector() -> None:
    api = FakeApi()
    src = KubePodSource(api, "node-7")
    assert src.relist() == "10"
    assert api.calls == [{"field_selector": "spec.nodeName=node-7"}]
    assert src.get_by_uid("u1") == PodInfo("a", "p1", "u1", {"team": "x"})
    assert src.get_by_name("a", "p1") is not None


def test_watch_events_keep_cache_current() -> None:
    src = KubePodSource(FakeApi(), "n")
    src.relist()
    assert src.apply_event({"type": "ADDED", "object": v1pod("b", "p2", "u2", "11")}) == "11"
    assert src.get_by_name("b", "p2") == PodInfo("b", "p2", "u2", {})
    # Same name, new UID (StatefulSet pod recreated): the old UID is forgotten.
    src.apply_event({"type": "MODIFIED", "object": v1pod("b", "p2", "u3", "12")})
    assert src.get_by_uid("u2") is None
    assert src.get_by_uid("u3") is not None
    src.apply_event({"type": "DELETED", "object": v1pod("b", "p2", "u3", "13")})
    assert src.get_by_name("b", "p2") is None
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}
    assert src.apply_event(bookmark) == "20"
    with pytest.raises(Exception, match="410"):
        src.apply_event({"type": "ERROR", "object": {"code": 410}})


def test_run_once_lists_then_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.watch

    seen: dict[str, Any] = {}

    class FakeWatch:
        def stream(self, fn: Any, **kw: Any) -> Any:
            seen.update(kw)
            yield {"type": "ADDED", "object": v1pod("c", "p9", "u9", "15")}

        def stop(self) -> None:
            seen["stopped"] = True

    monkeypatch.setattr(kubernetes.watch, "Watch", FakeWatch)
    src = KubePodSource(FakeApi(), "n")
    src.run_once()
    assert seen["resource_version"] == "10"
    assert seen["field_selector"] == "spec.nodeName=n"
    assert seen["stopped"]
    assert src.get_by_uid("u9") is not None
    assert src.synced.is_set()


def test_pod_from_dict() -> None:
    d = {"metadata": {"namespace": "a", "name": "b", "uid": "c", "labels": {"x": "y"}}}
    assert pod_from_api(d) == PodInfo("a", "b", "c", {"x": "y"})


def test_loop_retries_after_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.watch

    class Flaky(FakeApi):
        def __init__(self) -> None:
            super().__init__()
            self.fail = 2

        def list_pod_for_all_namespaces(self, **kw: Any) -> Any:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("apiserver down")
            return super().list_pod_for_all_namespaces(**kw)

    class IdleWatch:
        def stream(self, fn: Any, **kw: Any) -> Any:
            time.sleep(0.05)
            return iter(())

        def stop(self) -> None:
            pass

    monkeypatch.setattr(kubernetes.watch, "Watch", IdleWatch)
    src = KubePodSource(Flaky(), "n", backoff_s=0.01)
    src.start()
    try:
        assert src.synced.wait(5)
    finally:
        src.stop()
    assert src.errors == 2
    assert src.get_by_uid("u1") is not None
