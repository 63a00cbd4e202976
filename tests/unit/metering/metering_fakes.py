"""Shared by the metering unit tests: a fake Prometheus (series values per metric, no time
axis), tenants, plans, pods and a ledger reader."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubemeter_exporter import contract
from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import InputError, PrometheusUnavailableError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import MeteringConfig
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.prometheus import Sample
from kubemeter_operator.usage.periods import Period

ALLOC = contract.GPU_ALLOCATED_MS.name
ACTIVE = contract.GPU_ACTIVE_MS.name
CFG = MeteringConfig(
    step=timedelta(seconds=15),
    lag=timedelta(seconds=30),
    max_window=timedelta(minutes=5),
    scrape_margin=timedelta(minutes=2),
)
T0 = datetime(2026, 11, 10, 12, 0, 0, tzinfo=UTC)


class FakePrometheus:
    """Series values per metric; queries return them (or fail when ``down``)."""

    def __init__(self) -> None:
        self.series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self.down = False
        self.failing: set[str] = set()
        self.queries: list[tuple[str, datetime]] = []

    def set(self, metric: str, labels: Mapping[str, str], value: float) -> None:
        self.series.setdefault(metric, {})[tuple(sorted(labels.items()))] = value

    def gpu(self, ns: str, pod: str, alloc: int, active: int, **extra: str) -> None:
        labels = {
            "node": "n1", "gpu_uuid": extra.get("gpu_uuid", "GPU-1"),
            "gpu_model": "NVIDIA H100 80GB HBM3", "mig_profile": extra.get("mig_profile", ""),
            "namespace": ns, "pod": pod, "pod_uid": f"uid-{ns}-{pod}",
            "exporter_instance": extra.get("instance", "i1"),
            "job": extra.get("job", "kubemeter-exporter"),
        }  # fmt: skip
        self.set(ALLOC, labels, alloc)
        self.set(ACTIVE, labels, active)

    def query(self, promql: str, at: datetime) -> list[Sample]:
        self.queries.append((promql, at))
        if self.down:
            raise PrometheusUnavailableError("prometheus http://fake unreachable")
        m = re.match(r"last_over_time\(([a-zA-Z_:][a-zA-Z0-9_:]*)", promql)
        assert m, promql
        if m.group(1) in self.failing:
            raise InputError("query", "bad")
        return [Sample(dict(k), v) for k, v in self.series.get(m.group(1), {}).items()]


def tenant(name: str, namespaces: list[str], plan: str = "std", **spec: Any) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": name, "creationTimestamp": f"2026-01-0{len(name)}T00:00:00Z"},
            "spec": {"pricePlanRef": {"name": plan}, "namespaces": namespaces, **spec},
        }
    )


def plan(*meters: dict[str, Any]) -> PricePlanSpec:
    base = {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
            "pricing": {"model": "flat", "unitPrice": "2"}}  # fmt: skip
    return PricePlanSpec.model_validate({"currency": "USD", "meters": [base, *meters]})


def token_meter(name: str, kind: str, metric: str) -> dict[str, Any]:
    return {
        "name": name, "kind": kind, "unit": "1m-tokens",
        "pricing": {"model": "flat", "unitPrice": "1"},
        "source": {"metric": metric, "modelLabel": "model_name"},
    }  # fmt: skip


TENANTS = [
    tenant("acme", ["team-a"]),
    tenant("beta", ["team-b"], podSelector={"matchLabels": {"app": "infer"}}),
]
PLANS = {"std": plan()}
PODS = StaticPodDirectory(
    [
        PodMeta("team-a", "train", "uid-team-a-train", {"app": "train"}),
        PodMeta("team-b", "infer", "uid-team-b-infer", {"app": "infer"}),
        PodMeta("team-b", "web", "uid-team-b-web", {"app": "web"}),
    ]
)


NOV = Period(2026, 11)


def gpu_totals(ledger: Ledger, period: Period = NOV) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for t, totals in ledger.all_period_totals(period).items():
        for k, q in totals.items():
            if k.kind == "gpu":
                a, b = out.get(t, (0, 0))
                out[t] = (a + q.allocated_ms, b + q.active_ms)
    return out
