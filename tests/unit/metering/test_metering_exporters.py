"""The exporter directory (instance -> node of the exporter pod) and its periodic list."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from kubemeter_operator.errors import TransientError
from kubemeter_operator.metering.exporters import (
    ExporterDirectory,
    ExporterPod,
    ExporterWatch,
    pod_of,
    split_instance,
)


def pod(name: str, node: str | None, ip: str | None, *ports: int, **extra: Any) -> dict[str, Any]:
    container = {"name": "exporter", "ports": [{"containerPort": p, "name": "metrics"}
                                               for p in ports]}  # fmt: skip
    status: dict[str, Any] = {"podIP": ip, "podIPs": [{"ip": ip}, *extra.get("more", [])]}
    return {
        "metadata": {"name": name, "namespace": "kubemeter"},
        "spec": {"nodeName": node, "containers": [container]},
        "status": status if ip else {},
    }


def test_pod_of_reads_node_ips_and_tcp_ports() -> None:
    p = pod("exp-1", "gpu-1", "10.0.0.7", 9400, more=[{"ip": "fd00::7"}])
    p["spec"]["containers"][0]["ports"].append({"containerPort": 53, "protocol": "UDP"})
    assert pod_of(p) == ExporterPod("exp-1", "gpu-1", ("10.0.0.7", "fd00::7"), (9400,))
    assert pod_of(pod("pending", "gpu-1", None)) is None  # no IP yet
    assert pod_of(pod("unscheduled", None, "10.0.0.8")) is None


def test_split_instance() -> None:
    assert split_instance("10.0.0.1:9400") == ("10.0.0.1", 9400)
    assert split_instance("[fd00::1]:9400") == ("fd00::1", 9400)
    assert split_instance("fd00::1") == ("fd00::1", None)
    assert split_instance("10.0.0.1") == ("10.0.0.1", None)


def test_directory_matches_ip_and_port_keeps_departed_pods_for_a_while() -> None:
    now = [0.0]
    d = ExporterDirectory(
        [
            ExporterPod("a", "n1", ("10.0.0.1",), (9400,)),
            ExporterPod("b", "n2", ("10.0.0.2",)),  # no declared port: any port of its IP
        ],
        retention_s=60,
        clock=lambda: now[0],
    )
    assert d.node_of("10.0.0.1:9400") == "n1"
    assert d.node_of("10.0.0.1:8080") is None
    assert d.node_of("10.0.0.2:1234") == "n2"
    assert d.node_of("10.0.0.3:9400") is None
    assert d.lookup(["10.0.0.1:9400", "10.0.0.3:9400"]) == {"10.0.0.1:9400": "n1"}
    now[0] = 10
    d.replace([ExporterPod("c", "n3", ("10.0.0.3",), (9400,))])  # a rollout replaced a
    assert d.node_of("10.0.0.1:9400") == "n1"  # still its last samples' exporter
    assert len(d) == 1
    now[0] = 71
    d.replace([ExporterPod("c", "n3", ("10.0.0.3",), (9400,))])
    assert d.node_of("10.0.0.1:9400") is None
    # a current pod wins over a departed one on the same address
    now[0] = 80
    d.replace([ExporterPod("d", "n4", ("10.0.0.3",), (9400,))])
    assert d.node_of("10.0.0.3:9400") == "n4"
    assert d.refresh() is False  # no refresher


class FakeCore:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def list_namespaced_pod(self, namespace: str, **kw: Any) -> Any:
        self.calls.append((namespace, kw["label_selector"]))
        if self.fail:
            raise OSError("connection refused")
        return SimpleNamespace(data=json.dumps({"items": self.items}).encode())


def test_watch_lists_on_miss_at_most_every_few_seconds() -> None:
    now = [100.0]
    d = ExporterDirectory()
    w = ExporterWatch(
        None, d, namespace="kubemeter", selector="app.kubernetes.io/component=exporter",
        min_refresh_s=5, clock=lambda: now[0],
    )  # fmt: skip
    core = FakeCore([pod("exp-1", "gpu-1", "10.0.0.7", 9400)])
    w._core = core  # type: ignore[assignment]
    assert w.list() == 1
    assert core.calls == [("kubemeter", "app.kubernetes.io/component=exporter")]
    core.items.append(pod("exp-2", "gpu-2", "10.0.0.8", 9400))
    assert d.refresh() is False  # listed just now
    assert d.node_of("10.0.0.8:9400") is None
    now[0] += 6
    assert d.refresh() is True
    assert d.node_of("10.0.0.8:9400") == "gpu-2"
    core.fail = True
    now[0] += 6
    assert d.refresh() is False  # logged; the directory keeps what it had
    assert d.node_of("10.0.0.7:9400") == "gpu-1"
    with pytest.raises(TransientError):
        w.list()
