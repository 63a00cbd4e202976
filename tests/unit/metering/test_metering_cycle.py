"""The metering cycle against a fake Prometheus and a real (SQLite) ledger."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from unit.metering.metering_fakes import (
    ACTIVE,
    ALLOC,
    CFG,
    PLANS,
    PODS,
    T0,
    TENANTS,
    FakePrometheus,
    gpu_totals,
    plan,
    tenant,
    token_meter,
)

from kubemeter_operator.errors import InputError, TransientError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import MeteringConfig, MeteringCycle
from kubemeter_operator.metering.loop import MeteringLoop
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodMeta, PodRegistry
from kubemeter_operator.metering.prometheus import last_value_query, selector
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.tenancy import UNASSIGNED


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as led:
        yield led


def make(ledger: Any, prom: FakePrometheus, **kw: Any) -> MeteringCycle:
    return MeteringCycle(
        ledger, prom, PODS, CFG, metrics=MeteringMetrics(CollectorRegistry()), **kw
    )


def started(ledger: Any, prom: FakePrometheus, **kw: Any) -> MeteringCycle:
    """A cycle past its first window (the metering start: a baseline of what is there)."""
    cycle = make(ledger, prom, **kw)
    r = cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=47))
    assert r.window is not None
    assert r.accepted == 0
    return cycle


def test_first_window_is_the_baseline_then_deltas_per_tenant(ledger: Ledger) -> None:
    prom = FakePrometheus()
    prom.gpu("team-a", "train", 1000, 400)
    prom.gpu("team-b", "infer", 500, 100, gpu_uuid="GPU-2")
    prom.gpu("team-b", "web", 300, 0, gpu_uuid="GPU-3")
    prom.gpu("team-z", "x", 200, 0, gpu_uuid="GPU-4")
    prom.gpu("", "", 50, 0, gpu_uuid="GPU-5")
    cycle = make(ledger, prom)
    r = cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=47))
    assert r.window is not None
    assert (r.window.start, r.window.end) == (T0, T0 + timedelta(seconds=15))
    # the counters' values before the ledger existed are the baseline: nothing is billed
    assert r.tenants == {}
    assert r.accepted == 0
    assert r.sources["gpu"].ok
    assert r.sources["gpu"].series == 5
    # the query is the raw last value at the window end, span = window + margin
    q, at = prom.queries[0]
    assert (
        q
        == f"last_over_time({ALLOC}[{(CFG.initial_lookback + CFG.scrape_margin).seconds * 1000}ms])"
    )
    assert at == r.window.end
    ck = ledger.get_checkpoint("metering")
    assert ck is not None
    assert len(ck["gpu"]) == 5

    prom.gpu("team-a", "train", 2000, 800)
    prom.gpu("team-b", "infer", 700, 150, gpu_uuid="GPU-2")
    prom.gpu("team-b", "web", 400, 0, gpu_uuid="GPU-3")
    prom.gpu("team-z", "x", 260, 0, gpu_uuid="GPU-4")
    prom.gpu("", "", 70, 0, gpu_uuid="GPU-5")
    r2 = cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    assert r2.window is not None
    assert r2.window.start == r.window.end
    assert r2.tenants["acme"].allocated_ms == 1000
    assert r2.tenants[UNASSIGNED].allocated_ms == 180
    assert {(u.namespace, u.pod) for u in r2.unassigned} == {
        ("team-b", "web"),
        ("team-z", "x"),
        ("", ""),
    }
    assert prom.queries[-1][0] == f"last_over_time({ACTIVE}[{(15 + 120) * 1000}ms])"
    assert gpu_totals(ledger) == {"acme": (1000, 400), "beta": (200, 50), UNASSIGNED: (180, 0)}
    ck = ledger.get_checkpoint("metering")
    assert ck is not None
    assert ck["time"] == "2026-11-10T12:00:30Z"
    assert len(ck["gpu"]) == 5


def test_not_due_returns_no_window(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = make(ledger, prom)
    assert cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=47)).window is not None
    assert cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=50)).window is None


def test_duplicate_scrape_jobs_count_once(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 1000, 0, job="a")
    prom.gpu("team-a", "train", 1000, 0, job="b")
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    assert gpu_totals(ledger) == {"acme": (1000, 0)}


def test_prometheus_down_moves_nothing(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 1000, 0)
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    before = ledger.get_checkpoint("metering")
    prom.down = True
    with pytest.raises(TransientError):
        cycle.run(TENANTS, PLANS, now=T0 + timedelta(minutes=30))
    assert ledger.get_checkpoint("metering") == before
    # back: the outage is backfilled window by window, no gap, nothing lost
    prom.down = False
    prom.gpu("team-a", "train", 9000, 0)
    ends = []
    while True:
        r = cycle.run(TENANTS, PLANS, now=T0 + timedelta(minutes=30))
        assert r.window is not None
        ends.append(r.window)
        if not r.behind:
            break
    assert all(w.duration <= CFG.max_window for w in ends)
    assert all(a.end == b.start for a, b in itertools.pairwise(ends))
    assert gpu_totals(ledger) == {"acme": (9000, 0)}


def test_exporter_restart_is_not_double_counted(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 5000, 1000, instance="i1")
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    prom.gpu("team-a", "train", 5200, 1100, instance="i1")  # last value before the restart
    prom.gpu("team-a", "train", 300, 30, instance="i2")  # the new instance, from 0
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=77))
    assert gpu_totals(ledger) == {"acme": (5500, 1130)}


def test_counter_reset_counts_the_new_value(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 5000, 1000)
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    prom.gpu("team-a", "train", 70, 7)
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=77))
    prom.gpu("team-a", "train", 100, 10)
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=92))
    assert gpu_totals(ledger) == {"acme": (5100, 1010)}


def test_active_above_allocated_is_carried(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 1000, 1200)  # active read from a newer scrape
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    assert gpu_totals(ledger) == {"acme": (1000, 1000)}
    prom.gpu("team-a", "train", 2000, 1300)
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=77))
    assert gpu_totals(ledger) == {"acme": (2000, 1300)}


def test_backfill_splits_at_period_boundary(ledger: Ledger) -> None:
    prom = FakePrometheus()
    start = datetime(2026, 11, 30, 23, 58, 0, tzinfo=UTC)
    cycle = make(ledger, prom)
    cycle.run(TENANTS, PLANS, now=start + timedelta(seconds=45))
    prom.gpu("team-a", "train", 1000, 0)
    windows = []
    while True:
        r = cycle.run(TENANTS, PLANS, now=start + timedelta(minutes=10))
        assert r.window is not None
        windows.append(r.window)
        if not r.behind:
            break
    assert any(w.end == Period(2026, 12).start for w in windows)
    for w in windows:
        assert Period.of(w.start) == Period.of(w.end - timedelta(milliseconds=1))
    # all usage was read in the first window after the restart (Nov), none is lost
    assert gpu_totals(ledger, Period(2026, 11)) == {"acme": (1000, 0)}


def test_mig_profile_and_unknown_model_labels(ledger: Ledger) -> None:
    prom = FakePrometheus()
    cycle = started(ledger, prom)
    prom.gpu("team-a", "train", 100, 0, mig_profile="1g.10gb", gpu_uuid="MIG-1")
    prom.gpu("team-a", "train", 100, 0, mig_profile="weird", gpu_uuid="MIG-2")
    cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    keys = {(k.model, k.mig_profile) for k in ledger.period_totals("acme", Period(2026, 11))}
    assert keys == {("NVIDIA H100 80GB HBM3", "1g.10gb"), ("NVIDIA H100 80GB HBM3", "")}


def test_conflict_from_another_replica_reloads_and_continues(ledger: Ledger) -> None:
    prom = FakePrometheus()
    started(ledger, prom)
    prom.gpu("team-a", "train", 1000, 0)
    now = T0 + timedelta(seconds=62)

    class Racing:
        """The first write loses the race: the other replica commits the same window."""

        def __init__(self) -> None:
            self.raced = False

        def get_checkpoint(self, name: str) -> dict[str, Any] | None:
            return ledger.get_checkpoint(name)

        def record_metering(self, commit: Any) -> Any:
            if not self.raced:
                self.raced = True  # the other replica commits between our read and write
                make(ledger, prom).run(TENANTS, PLANS, now=now + timedelta(seconds=15))
            return ledger.record_metering(commit)

    r = make(Racing(), prom).run(TENANTS, PLANS, now=now)
    assert r.replica_conflicts == 1
    assert gpu_totals(ledger) == {"acme": (1000, 0)}


def test_token_sources_baseline_then_deltas_and_plan_filter(ledger: Ledger) -> None:
    prom = FakePrometheus()
    plans = {
        "tok": plan(
            token_meter("prompt", "promptTokens", "vllm:prompt_tokens_total"),
            token_meter("completion", "completionTokens", "vllm:generation_tokens_total"),
            token_meter("cached", "cachedPromptTokens", "vllm:cached_prompt_tokens_total"),
        ),
        "std": plan(),  # beta: tokens come from the events API, not Prometheus
    }
    tenants = [tenant("acme", ["team-a"], plan="tok"), tenant("beta", ["team-b"])]

    def tok(metric: str, ns: str, pod: str, v: int) -> None:
        prom.set(metric, {"namespace": ns, "pod": pod, "model_name": "llama"}, v)

    for ns, pod in (("team-a", "train"), ("team-b", "infer"), ("team-q", "x")):
        tok("vllm:prompt_tokens_total", ns, pod, 1_000_000)
        tok("vllm:generation_tokens_total", ns, pod, 500_000)
        tok("vllm:cached_prompt_tokens_total", ns, pod, 100_000)
    cycle = make(ledger, prom)
    r = cycle.run(tenants, plans, now=T0 + timedelta(seconds=47))
    assert r.tenants == {}  # baseline: history is not billed
    assert sum(1 for s in r.sources if s.startswith("tokens:")) == 3
    for ns, pod in (("team-a", "train"), ("team-b", "infer"), ("team-q", "x")):
        tok("vllm:prompt_tokens_total", ns, pod, 1_000_300)
        tok("vllm:generation_tokens_total", ns, pod, 500_050)
        tok("vllm:cached_prompt_tokens_total", ns, pod, 100_500)  # above prompt: capped
    r = cycle.run(tenants, plans, now=T0 + timedelta(seconds=62))
    assert set(r.tenants) == {"acme", UNASSIGNED}
    acme = ledger.period_totals("acme", Period(2026, 11))
    (q,) = [q for k, q in acme.items() if k.kind == "tokens"]
    assert (q.prompt_tokens, q.completion_tokens, q.cached_prompt_tokens) == (300, 50, 300)
    assert ledger.period_totals("beta", Period(2026, 11)) == {}


def test_failing_token_source_degrades_but_gpu_continues(ledger: Ledger) -> None:
    prom = FakePrometheus()
    plans = {"std": plan(token_meter("prompt", "promptTokens", "vllm:prompt_tokens_total"))}
    prom.set("vllm:prompt_tokens_total", {"namespace": "team-a", "pod": "train"}, 10)
    prom.gpu("team-a", "train", 100, 0)
    cycle = make(ledger, prom)
    cycle.run(TENANTS, plans, now=T0 + timedelta(seconds=47))
    prom.failing.add("vllm:prompt_tokens_total")
    prom.set("vllm:prompt_tokens_total", {"namespace": "team-a", "pod": "train"}, 25)
    r = cycle.run(TENANTS, plans, now=T0 + timedelta(seconds=62))
    assert list(r.degraded) == ["tokens:promptTokens:vllm:prompt_tokens_total"]
    prom.failing.clear()
    r = cycle.run(TENANTS, plans, now=T0 + timedelta(seconds=77))
    assert not r.degraded
    assert r.tenants["acme"].prompt_tokens == 15  # caught up, nothing lost


def test_pod_registry_keeps_deleted_pods_for_a_while() -> None:
    now = [0.0]
    reg = PodRegistry(retention_s=60, clock=lambda: now[0])
    pod = PodMeta("ns", "p", "u1", {"a": "b"})
    reg.upsert(pod)
    reg.delete(pod)
    now[0] = 59
    assert reg.lookup("ns", "p", "u1") == pod
    assert reg.lookup("ns", "p") == pod
    now[0] = 61
    reg.expire()
    assert reg.lookup("ns", "p", "u1") is None
    assert reg.lookup("ns", "p") is None
    assert len(reg) == 0


def test_query_builders() -> None:
    assert selector("m", {"b": 'x"y', "a": "1"}) == 'm{a="1",b="x\\"y"}'
    assert last_value_query("m", 1500) == "last_over_time(m[1500ms])"
    with pytest.raises(InputError):
        selector("bad metric")
    with pytest.raises(InputError):
        selector("m", {"bad-label": "x"})
    with pytest.raises(InputError):
        last_value_query("m", 0)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MeteringConfig(prune_after=timedelta(minutes=1))


def test_loop_backoff_degraded_and_hooks(ledger: Ledger) -> None:
    prom = FakePrometheus()
    prom.gpu("team-a", "train", 100, 0)
    now = [T0 + timedelta(seconds=47)]
    cycle = make(ledger, prom, clock=lambda: now[0])
    seen: list[Any] = []
    errors: list[Exception] = []

    async def on_cycle(result: Any) -> None:
        seen.append(result)

    loop = MeteringLoop(
        cycle, lambda: (TENANTS, PLANS), interval_s=4, min_backoff_s=0.5,
        on_cycle=on_cycle, on_error=errors.append,
    )  # fmt: skip

    async def go() -> None:
        assert await loop.step() == 4
        assert len(seen) == 1
        prom.down = True
        now[0] += timedelta(seconds=15)
        waits = [await loop.step() for _ in range(5)]
        assert waits == [0.5, 1, 2, 4, 4]
        assert loop.degraded == {"prometheus": "prometheus http://fake unreachable"}
        assert len(errors) == 5
        prom.down = False
        assert await loop.step() == 4
        assert not loop.degraded
        assert loop.failures == 0
        now[0] += timedelta(minutes=20)
        assert await loop.step() == 0  # behind: go again at once
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.1)
        loop.stop()
        await task

    asyncio.run(go())
    assert seen[-1].window.end == T0 + timedelta(minutes=20, seconds=30)


def test_unassigned_cli_lists_pods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubemeter_operator.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    prom = FakePrometheus()
    with Ledger.open(url) as led:
        cycle = started(led, prom)
        prom.gpu("team-z", "x", 7_200_000, 100, gpu_uuid="GPU-4")
        prom.gpu("team-b", "web", 300, 0, gpu_uuid="GPU-3")
        prom.gpu("team-a", "train", 999, 0)
        cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    assert main(["unassigned", "--period", "2026-11", "--db", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["NAMESPACE", "POD", "GPU-HOURS"]
    assert out[1].split()[:4] == ["team-b", "web", "0.0001", "300"]
    assert out[2].split()[:4] == ["team-z", "x", "2.0000", "7200000"]
    assert main(["unassigned", "--period", "2026-11", "--db", url, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["pod"] for p in data["pods"]] == ["web", "x"]
    assert main(["unassigned", "--period", "2026-10", "--db", url]) == 0
    assert "no unassigned usage" in capsys.readouterr().out
    assert main(["unassigned", "--period", "2026-13", "--db", url]) == 2


def test_a_series_named_by_pod_uid_only_is_billed_to_the_pods_tenant(ledger: Ledger) -> None:
    """The exporter names a pod by its UID alone when pod-resources lists no allocation for
    it (it reached the GPU without one); the operator's pod registry knows its name."""
    prom = FakePrometheus()
    labels = {"node": "n1", "gpu_uuid": "GPU-9", "gpu_model": "NVIDIA H100 80GB HBM3",
              "namespace": "", "pod": "", "pod_uid": "uid-team-a-train",
              "exporter_instance": "i1", "job": "kubemeter-exporter"}  # fmt: skip
    prom.set(ALLOC, labels, 100)
    prom.set(ACTIVE, labels, 10)
    cycle = started(ledger, prom)
    prom.set(ALLOC, labels, 1100)
    prom.set(ACTIVE, labels, 510)
    r = cycle.run(TENANTS, PLANS, now=T0 + timedelta(seconds=62))
    assert r.tenants["acme"].allocated_ms == 1000
    assert r.tenants["acme"].active_ms == 500
    (record,) = ledger.window_records("acme", Period(2026, 11))
    assert (record.namespace, record.pod) == ("team-a", "train")
