"""A real month boundary in the past, through a real Prometheus: the exporter's and a vLLM
server's counters for late October to early November 2026 are backfilled with
`promtool tsdb create-blocks-from openmetrics`, Prometheus is started on that data, and the
operator's cycle (meter -> bill -> status, against a real SQLite ledger) runs with its clock
stepping through the span. October's invoice is finalised, November opens, and the totals
equal the backfilled truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubemeter_operator.api.usage import GpuUsage, TokenUsage, UsageRecord
from kubemeter_operator.billing import statements
from kubemeter_operator.metering.prometheus import PrometheusClient
from kubemeter_operator.rating import rate
from kubemeter_operator.usage import Period, accumulate

from support.backfill import backfilled_prometheus, require_promtool
from support.timeaxis import (
    ACTIVE,
    ALLOCATED,
    VLLM_GENERATION,
    VLLM_PROMPT,
    GpuExporter,
    Scraper,
    SeriesStore,
    TokenServer,
    group_sum,
)
from support.timetravel import H100, TimeTravel

pytestmark = pytest.mark.integration

OCT, NOV = Period(2026, 10), Period(2026, 11)
DATA_FROM = datetime(2026, 10, 31, 20, tzinfo=UTC)
DATA_TO = datetime(2026, 11, 1, 3, tzinfo=UTC)
CLOCK_FROM = datetime(2026, 10, 31, 21, tzinfo=UTC)
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

PLAN: dict[str, Any] = {
    "currency": "USD",
    "platformFee": "50",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
         "pricing": {"model": "flat", "unitPrice": "3.20"}},
        {"name": "gpu-active", "kind": "gpuTime", "unit": "gpu-hour", "basis": "active",
         "migProfile": "3g.40gb", "pricing": {"model": "flat", "unitPrice": "1.10"}},
        {"name": "prompt", "kind": "promptTokens", "unit": "1m-tokens",
         "source": {"metric": VLLM_PROMPT, "modelLabel": "model_name"},
         "pricing": {"model": "flat", "unitPrice": "0.15"}},
        {"name": "completion", "kind": "completionTokens", "unit": "1m-tokens",
         "source": {"metric": VLLM_GENERATION, "modelLabel": "model_name"},
         "pricing": {"model": "flat", "unitPrice": "0.60"}},
    ],
}  # fmt: skip


def history() -> SeriesStore:
    """What the exporter and vLLM served, scraped every 15 s (one exporter restart)."""
    store = SeriesStore()
    scraper = Scraper(store, start=DATA_FROM, interval=timedelta(seconds=15))
    node = GpuExporter("gpu-node-1", started=DATA_FROM - timedelta(hours=1), instance="exp-a")
    node.allocate(
        namespace="acme",
        pod="train-0",
        pod_uid="u-train",
        gpu_uuid="GPU-1",
        gpu_model=H100,
        start=DATA_FROM,
        utilisation="0.83",
    )
    node.allocate(
        namespace="acme",
        pod="mig-0",
        pod_uid="u-mig",
        gpu_uuid="MIG-1",
        gpu_model=H100,
        mig_profile="3g.40gb",
        start=DATA_FROM + timedelta(hours=2),
        utilisation="0.5",
    )
    node.allocate(
        namespace="globex",
        pod="infer-0",
        pod_uid="u-infer",
        gpu_uuid="GPU-2",
        gpu_model=H100,
        start=DATA_FROM,
        stop=datetime(2026, 11, 1, 1, 30, tzinfo=UTC),
    )
    node.restart(datetime(2026, 11, 1, 0, 20, tzinfo=UTC), "exp-b")
    scraper.add(node, labels={"job": "kubemeter-exporter", "instance": "10.0.0.1:9400"})
    vllm = TokenServer(
        namespace="acme",
        pod="vllm-0",
        model=MODEL,
        started=DATA_FROM - timedelta(days=3),
        prompt_per_s="812.5",
        generation_per_s="97",
    )
    vllm.set_rate(datetime(2026, 10, 31, 23, 30, tzinfo=UTC), VLLM_PROMPT, "2400")
    scraper.add(vllm, offset=timedelta(seconds=7), labels={"job": "vllm"})
    scraper.advance_to(DATA_TO)
    return store  # fmt: skip


def test_october_closes_on_backfilled_history(tmp_path: Path) -> None:
    require_promtool()
    store = history()
    with backfilled_prometheus(store, tmp_path / "prom") as prom:
        tt = TimeTravel(f"sqlite:///{tmp_path / 'ledger.db'}", start=CLOCK_FROM,
                        prometheus=PrometheusClient(prom.url))  # fmt: skip
        try:
            tt.add_plan("std", PLAN)
            tt.add_tenant("acme", plan="std", namespaces=["acme"])
            tt.add_tenant("globex", plan="std", namespaces=["globex"], discountPercent="5")
            tt.store = store  # the oracle reads the backfilled truth
            tt.advance(CLOCK_FROM + timedelta(minutes=5))  # the first window: vLLM's baseline
            baseline = tt.operator.metering.metered_until()
            assert baseline is not None
            tt.advance(DATA_TO - timedelta(minutes=5), every=timedelta(minutes=5))
            check(tt, store, baseline)
            print("October:", {t: str(statements.final_statement(tt.ledger, t, OCT).total)  # type: ignore[union-attr]
                               for t in ("acme", "globex")})  # fmt: skip
        finally:
            tt.close()


def truth(
    store: SeriesStore, tenant_ns: str, period: Period, baseline: datetime
) -> list[UsageRecord]:
    """What `tenant_ns` used in `period` by the samples (vLLM: after its baseline, the
    counters' values when metering first saw them), computed without the operator."""
    records: list[UsageRecord] = []
    alloc = store.increase(ALLOCATED, period.start, period.end)
    active = store.increase(ACTIVE, period.start, period.end)
    for labels, value in sorted(alloc.items()):
        lab = dict(labels)
        if lab.get("namespace") != tenant_ns or not value:
            continue
        records.append(GpuUsage(
            model=lab["gpu_model"], mig_profile=lab.get("mig_profile") or None,
            allocated_ms=int(value), active_ms=min(int(active.get(labels, 0)), int(value)),
            window_start=period.start, window_end=period.end))  # fmt: skip
    start = max(baseline, period.start)
    prompt = group_sum(store.increase(VLLM_PROMPT, start, period.end), ["namespace"])
    generation = group_sum(store.increase(VLLM_GENERATION, start, period.end), ["namespace"])
    if (tenant_ns,) in prompt:
        records.append(TokenUsage(model=MODEL, prompt_tokens=int(prompt[(tenant_ns,)]),
                                  completion_tokens=int(generation[(tenant_ns,)]),
                                  timestamp=period.start))  # fmt: skip
    return records


def check(tt: TimeTravel, store: SeriesStore, baseline: datetime) -> None:
    ledger = tt.ledger
    for tenant in ("acme", "globex"):
        october = statements.final_statement(ledger, tenant, OCT)
        assert october is not None, f"{tenant}: October not finalised"
        terms = ledger.get_terms(tenant, OCT)
        assert terms is not None
        expected = rate(terms.plan, accumulate(truth(store, tenant, OCT, baseline), OCT),
                        period=OCT, discount_percent=terms.discount_percent)  # fmt: skip
        assert october == expected
        assert statements.final_statement(ledger, tenant, NOV) is None
        status = tt.kube.status[tenant]
        assert status["period"] == "2026-11"
        final = {"period": "2026-10", "state": "Final", "currency": "USD",
                 "total": str(october.total)}  # fmt: skip
        assert status["previousPeriod"] == final
        assert tt.kube.reasons(tenant).count("PeriodClosed") == 1
        # November so far: what the backfilled counters say, up to the last metered window
        covered = tt.operator.metering.metered_until()
        assert covered is not None
        assert covered > NOV.start + timedelta(hours=2)
        so_far = accumulate(truth(_Cut(store, covered), tenant, NOV, baseline), NOV)
        assert so_far
        assert ledger.period_totals(tenant, NOV) == so_far
    acme = statements.final_statement(ledger, "acme", OCT)
    assert acme is not None
    assert acme.line("prompt").quantity > 0
    assert acme.line("gpu-active").quantity > 0  # the MIG slice, priced by profile


class _Cut(SeriesStore):
    """`store` as of `until`: `increase` never reads past it (what metering has covered)."""

    def __init__(self, store: SeriesStore, until: datetime) -> None:
        super().__init__()
        self._store = store
        self._until = until

    def increase(self, metric: str, start: Any, end: Any, matchers: Any = None) -> Any:
        return self._store.increase(metric, start, min(end, self._until), matchers)
