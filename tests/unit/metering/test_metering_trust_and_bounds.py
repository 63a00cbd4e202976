"""Metering trusts no counter: source checks (job, exporter target and node, valid values),
physics bounds with the quarantine, and tombstones, on a fake Prometheus and a real SQLite
ledger."""

from __future__ import annotations

import dataclasses
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

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import CycleResult, MeteringConfig, MeteringCycle
from kubemeter_operator.metering.exporters import ExporterDirectory, ExporterPod
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.usage.periods import Period
from kubemeter_operator.usage.tenancy import UNASSIGNED

JOB = "kubemeter-exporter"
BOUNDED = MeteringConfig(
    step=timedelta(seconds=15),
    lag=timedelta(seconds=30),
    max_window=timedelta(minutes=5),
    scrape_margin=timedelta(minutes=2),
    exporter_job=JOB,
    gpu_tolerance=timedelta(seconds=5),
    max_token_rate=10.0,
)
SPAN_MS = (15 + 120 + 5) * 1000
"""The GPU bound of a 15 s window: window + scrape margin + tolerance."""
EXPORTER = "10.0.0.1:9400"


def series(
    ns: str = "team-a",
    pod: str = "train",
    *,
    job: str = JOB,
    instance: str = EXPORTER,
    node: str = "n1",
    exporter_instance: str = "i1",
    gpu: str = "GPU-1",
) -> dict[str, str]:
    return {
        "node": node, "gpu_uuid": gpu, "gpu_model": "NVIDIA H100 80GB HBM3",
        "mig_profile": "", "namespace": ns, "pod": pod, "pod_uid": f"uid-{ns}-{pod}",
        "exporter_instance": exporter_instance, "job": job, "instance": instance,
    }  # fmt: skip


def put(prom: FakePrometheus, labels: dict[str, str], alloc: float, active: float = 0) -> None:
    prom.set(ALLOC, labels, alloc)
    prom.set(ACTIVE, labels, active)


def drop(prom: FakePrometheus, labels: dict[str, str]) -> None:
    key = tuple(sorted(labels.items()))
    for metric in (ALLOC, ACTIVE):
        prom.series.get(metric, {}).pop(key, None)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as led:
        yield led


class Clock:
    """Cycle times: the first call is the metering start (the baseline window)."""

    def __init__(self) -> None:
        self.now = T0 + timedelta(seconds=47)

    def step(self, seconds: int = 15) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def make(
    ledger: Any,
    prom: FakePrometheus,
    config: MeteringConfig = BOUNDED,
    registry: CollectorRegistry | None = None,
    **kw: Any,
) -> MeteringCycle:
    return MeteringCycle(
        ledger, prom, PODS, config, metrics=MeteringMetrics(registry or CollectorRegistry()), **kw
    )


def start(cycle: MeteringCycle, clock: Clock, plans: Any = PLANS) -> CycleResult:
    r = cycle.run(TENANTS, plans, now=clock.now)
    assert r.window is not None
    return r


# -- source trust ------------------------------------------------------------------------


def test_gpu_series_of_other_jobs_are_ignored_reported_and_counted(ledger: Ledger) -> None:
    prom, clock, registry = FakePrometheus(), Clock(), CollectorRegistry()
    cycle = make(ledger, prom, registry=registry)
    start(cycle, clock)
    put(prom, series(), 1000, 500)
    # a tenant's pod claims the same series, 10x, through a pods job with honor_labels
    put(prom, series(job="kubernetes-pods", instance="10.9.9.9:8000"), 10_000, 10_000)
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (1000, 500)}
    assert [(u.reason, u.job, u.tenant) for u in r.untrusted] == [
        ("job", "kubernetes-pods", "acme")
    ]
    assert "kubernetes-pods" in r.untrusted[0].message
    # the active counter is read from the exporter's job only
    assert f'{ACTIVE}{{job="{JOB}"}}' in prom.queries[-1][0]
    assert f"last_over_time({ALLOC}[" in prom.queries[-2][0]
    assert registry.get_sample_value("kubemeter_metering_untrusted_series", {"reason": "job"}) == 1
    cycle.run(TENANTS, PLANS, now=clock.step())
    assert (
        registry.get_sample_value("kubemeter_metering_untrusted_reads_total", {"reason": "job"})
        == 2
    )


def test_node_check_against_the_exporter_pods(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    directory = ExporterDirectory([ExporterPod("exp-a", "n1", ("10.0.0.1",), (9400,))])
    refreshes: list[int] = []

    def refresher() -> bool:  # a new exporter pod shows up on the next list
        refreshes.append(1)
        directory.replace(
            [
                ExporterPod("exp-a", "n1", ("10.0.0.1",), (9400,)),
                ExporterPod("exp-b", "n2", ("10.0.0.2",), (9400,)),
            ]
        )
        return True

    directory.refresher = refresher
    cycle = make(ledger, prom, exporters=directory)
    start(cycle, clock)
    put(prom, series(), 1000)
    put(prom, series(gpu="GPU-2", node="n7"), 2000)  # the exporter's target, another node
    put(prom, series(gpu="GPU-3", instance="10.0.0.1:8080"), 4000)  # another port of its IP
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (1000, 0)}
    assert sorted((u.reason, u.node, u.instance) for u in r.untrusted) == [
        ("instance", "n1", "10.0.0.1:8080"),
        ("node", "n7", EXPORTER),
    ]
    assert len(refreshes) == 1  # an unknown target asks for a fresh list
    # an exporter pod the list did not have yet: the list on miss finds it, same cycle
    put(prom, series(gpu="GPU-4", node="n2", instance="10.0.0.2:9400", exporter_instance="j"), 300)
    cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (1300, 0)}


def test_exporter_targets_verified_earlier_stay_trusted_after_a_restart(ledger: Ledger) -> None:
    """The exporter pod is replaced while the operator restarts: the new process does not
    know the old pod, but the checkpoint remembers its target, so its last samples count."""
    prom, clock = FakePrometheus(), Clock()
    directory = ExporterDirectory([ExporterPod("exp-a", "n1", ("10.0.0.1",), (9400,))])
    cycle = make(ledger, prom, exporters=directory)
    start(cycle, clock)
    put(prom, series(), 1000)
    cycle.run(TENANTS, PLANS, now=clock.step())
    ck = ledger.get_checkpoint("metering")
    assert ck is not None
    assert ck["exporters"] == {EXPORTER: ["n1", ck["exporters"][EXPORTER][1]]}
    put(prom, series(), 1500)  # the old pod's final value, read after the restart
    fresh = ExporterDirectory([ExporterPod("exp-b", "n1", ("10.0.0.5",), (9400,))])
    r = make(ledger, prom, exporters=fresh).run(TENANTS, PLANS, now=clock.step())
    assert not r.untrusted
    assert gpu_totals(ledger) == {"acme": (1500, 0)}
    # but a remembered target never vouches for another node
    put(prom, series(gpu="GPU-9", node="n2", exporter_instance="x"), 100)
    r = make(ledger, prom, exporters=fresh).run(TENANTS, PLANS, now=clock.step())
    assert [u.reason for u in r.untrusted] == ["node"]


def test_bad_series_never_fail_the_cycle_for_the_others(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 1000, 100)
    put(prom, series("team-b", "infer", gpu="GPU-2"), 2.0**63 + 4096)  # above 2**63
    put(prom, series("team-b", "web", gpu="GPU-3"), float("nan"))
    put(prom, series("team-z", "x", gpu="GPU-4"), -5)
    put(prom, series("n" * 80, "x", gpu="GPU-5"), 10)  # not a namespace a record can hold
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (1000, 100)}
    assert sorted((u.namespace[:6], u.reason) for u in r.untrusted) == [
        ("nnnnnn", "labels"),
        ("team-b", "value"),
        ("team-b", "value"),
        ("team-z", "value"),
    ]
    ck = ledger.get_checkpoint("metering")
    assert ck is not None
    assert len(ck["gpu"]) == 1  # the bad ones are not counted, so not checkpointed
    # once the counter is sane again it counts from where it is (a new series: from 0)
    put(prom, series("team-b", "infer", gpu="GPU-2"), 700, 0)
    cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger)["beta"] == (700, 0)


# -- physics bounds and the quarantine ---------------------------------------------------


def test_gpu_delta_over_the_bound_is_quarantined_and_the_checkpoint_moves_past_it(
    ledger: Ledger,
) -> None:
    prom, clock, registry = FakePrometheus(), Clock(), CollectorRegistry()
    cycle = make(ledger, prom, registry=registry)
    start(cycle, clock)
    put(prom, series(), 10_000, 5_000)
    cycle.run(TENANTS, PLANS, now=clock.step())
    put(prom, series(), 10_000 + 3_600_000, 5_000)  # an hour of GPU time in 15 s
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert r.window is not None
    assert gpu_totals(ledger) == {"acme": (10_000, 5_000)}
    assert r.tenants == {}
    (held,) = r.quarantined
    assert held.tenant == "acme"
    assert held.record.allocated_ms == 3_600_000  # type: ignore[union-attr]
    assert (held.window_start, held.window_end) == (r.window.start, r.window.end)
    assert "bound" in held.reason
    assert registry.get_sample_value("kubemeter_metering_quarantined_total", {"source": "gpu"}) == 1
    (row,) = ledger.quarantined()
    assert (row.id, row.state, row.record) == (held.id, "held", held.record)
    # the checkpoint moved past it: the next window counts only what follows
    put(prom, series(), 10_000 + 3_600_000 + 15_000, 5_000)
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert not r.quarantined
    assert gpu_totals(ledger) == {"acme": (25_000, 5_000)}
    assert len(ledger.quarantined()) == 1


def test_a_new_series_is_bounded_by_the_lookback_span(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(gpu="GPU-1"), SPAN_MS)  # born at 0 no earlier than the span allows
    put(prom, series(gpu="GPU-2"), SPAN_MS + 1)  # a counter older than its first sight
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (SPAN_MS, 0)}
    assert [q.record.allocated_ms for q in r.quarantined] == [SPAN_MS + 1]  # type: ignore[union-attr]


def test_a_simulated_clock_scales_the_bounds_and_no_more(ledger: Ledger) -> None:
    """The demo's exporter runs 60x faster than wall time: its GPU counters grow by up to
    60 x the window, and only a delta over 60 x the span (+ tolerance) is quarantined."""
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom, dataclasses.replace(BOUNDED, time_scale=60))
    start(cycle, clock)
    scaled = (15 + 120) * 1000 * 60 + 5_000  # (window + margin) x 60 + tolerance
    put(prom, series(gpu="GPU-1"), scaled)
    put(prom, series(gpu="GPU-2"), scaled + 1)
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (scaled, 0)}
    assert [q.record.allocated_ms for q in r.quarantined] == [scaled + 1]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="time_scale"):
        dataclasses.replace(BOUNDED, time_scale=0)


def test_token_deltas_over_the_rate_are_quarantined(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    plans = {"std": plan(
        token_meter("prompt", "promptTokens", "vllm:prompt_tokens_total"),
        token_meter("cached", "cachedPromptTokens", "vllm:cached_prompt_tokens_total"),
    )}  # fmt: skip
    labels = {"namespace": "team-a", "pod": "train", "model_name": "llama"}
    prom.set("vllm:prompt_tokens_total", labels, 1_000_000)
    prom.set("vllm:cached_prompt_tokens_total", labels, 10)
    cycle = make(ledger, prom)
    start(cycle, clock, plans)  # the sources' baseline
    prom.set("vllm:prompt_tokens_total", labels, 1_000_005)
    prom.set("vllm:cached_prompt_tokens_total", labels, 15)
    cycle.run(TENANTS, plans, now=clock.step())
    # 10 tokens/s over this window, the previous one (the counted sample's age) and the margin
    limit = 10 * (15 + 15 + 120)
    prom.set("vllm:prompt_tokens_total", labels, 1_000_005 + limit)
    prom.set("vllm:cached_prompt_tokens_total", labels, 15 + limit + 1)
    r = cycle.run(TENANTS, plans, now=clock.step())
    assert r.tenants["acme"].prompt_tokens == limit
    assert r.tenants["acme"].cached_prompt_tokens == 0  # the cached delta is held
    (held,) = r.quarantined
    rec = held.record
    assert (held.source, rec.prompt_tokens, rec.cached_prompt_tokens) == (  # type: ignore[union-attr]
        "tokens", limit + 1, limit + 1,
    )  # fmt: skip


def test_release_and_discard(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 3_600_000)
    put(prom, series("team-b", "infer", gpu="GPU-2"), 7_200_000)
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {}
    a, b = sorted(r.quarantined, key=lambda q: q.tenant)
    row, changed = ledger.release_quarantined(a.id[:10])  # a unique prefix will do
    assert (row.id, row.state, changed) == (a.id, "released", True)
    assert gpu_totals(ledger) == {"acme": (3_600_000, 0)}
    assert ledger.release_quarantined(a.id) == (row, False)  # idempotent
    assert gpu_totals(ledger) == {"acme": (3_600_000, 0)}
    # the released usage is the window metering would have written: the same key
    assert [w.window_start for w in ledger.window_records("acme", Period(2026, 11))] == [
        a.window_start
    ]
    row_b, changed = ledger.discard_quarantined(b.id)
    assert (row_b.state, changed) == ("discarded", True)
    assert ledger.discard_quarantined(b.id)[1] is False
    with pytest.raises(InputError, match=b.id):
        ledger.release_quarantined(b.id)
    with pytest.raises(InputError, match=a.id):
        ledger.discard_quarantined(a.id)
    with pytest.raises(InputError, match="no quarantined usage"):
        ledger.release_quarantined("0123456789abcdef")
    with pytest.raises(InputError, match="quarantine id"):
        ledger.release_quarantined("xyz")
    assert [q.state for q in ledger.quarantined(None)] == ["released", "discarded"]
    assert ledger.quarantined() == []
    assert gpu_totals(ledger) == {"acme": (3_600_000, 0)}


def test_released_usage_of_a_finalised_period_is_booked_as_late_usage(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 3_600_000)
    (held,) = cycle.run(TENANTS, PLANS, now=clock.step()).quarantined
    ledger.ensure_billing_state("acme")
    with ledger.transaction("close november") as tx:  # November is final meanwhile
        tx.set_closed_through("acme", Period(2026, 11))
    ledger.release_quarantined(held.id)
    assert ledger.period_totals("acme", Period(2026, 11)) == {}
    late = ledger.late_totals("acme", Period(2026, 12))
    assert [(k.kind, q.allocated_ms) for k, q in late[Period(2026, 11)].items()] == [
        ("gpu", 3_600_000)
    ]


def test_a_replayed_window_holds_its_quarantine_once(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    before = ledger.get_checkpoint("metering")
    assert before is not None
    put(prom, series(), 3_600_000)
    now = clock.step()
    first = cycle.run(TENANTS, PLANS, now=now)
    ledger.set_checkpoint("metering", before)  # as if the commit had to be done again
    again = cycle.run(TENANTS, PLANS, now=now)
    assert [q.id for q in again.quarantined] == [q.id for q in first.quarantined]
    assert len(ledger.quarantined()) == 1


def test_quarantine_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubemeter_operator.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    prom, clock = FakePrometheus(), Clock()
    with Ledger.open(url) as led:
        cycle = make(led, prom)
        start(cycle, clock)
        put(prom, series(), 3_600_000)
        (held,) = cycle.run(TENANTS, PLANS, now=clock.step()).quarantined
    assert main(["quarantine", "list", "--db", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["ID", "STATE", "TENANT"]
    assert out[1].split()[:4] == [held.id[:16], "held", "acme", "team-a/train"]
    assert "3600000 gpu-ms" in out[1]
    assert main(["quarantine", "list", "--db", url, "-o", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["entries"]
    assert (entry["id"], entry["record"]["allocatedMs"]) == (held.id, 3_600_000)
    assert main(["quarantine", "release", held.id[:16], "--db", url]) == 0
    assert "released" in capsys.readouterr().out
    assert main(["quarantine", "release", held.id, "--db", url]) == 0
    assert "already released" in capsys.readouterr().out
    assert main(["quarantine", "discard", held.id, "--db", url]) == 2
    assert held.id in capsys.readouterr().err
    assert main(["quarantine", "list", "--db", url]) == 0
    assert "no quarantined usage" in capsys.readouterr().out
    assert main(["quarantine", "list", "--state", "all", "--db", url]) == 0
    assert "released" in capsys.readouterr().out
    with Ledger.open(url) as led:
        assert gpu_totals(led) == {"acme": (3_600_000, 0)}


# -- tombstones and the baseline ---------------------------------------------------------


def test_a_returning_series_bills_its_increase_over_the_span_it_covers(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 60_000)
    cycle.run(TENANTS, PLANS, now=clock.step())
    seen = ledger.get_checkpoint("metering")["gpu"]  # type: ignore[index]
    drop(prom, series())  # Prometheus lost sight of it for three hours
    for _ in range(3 * 240):
        clock.step()
    while cycle.run(TENANTS, PLANS, now=clock.now).behind:
        pass
    assert ledger.get_checkpoint("metering")["gpu"] == seen  # type: ignore[index]  # a tombstone
    put(prom, series(), 60_000 + 3 * 3_600_000, 1000)
    r = cycle.run(TENANTS, PLANS, now=clock.step())
    assert r.window is not None
    assert not r.quarantined
    assert gpu_totals(ledger) == {"acme": (60_000 + 3 * 3_600_000, 1000)}
    (record,) = [
        w for w in ledger.window_records("acme", Period(2026, 11))
        if w.window_end == r.window.end  # type: ignore[union-attr]
    ]  # fmt: skip
    last_seen = T0 + timedelta(seconds=30)  # the end of the window that last saw it change
    assert (record.window_start, record.allocated_ms) == (last_seen, 3 * 3_600_000)  # type: ignore[union-attr]


def test_an_unchanged_read_does_not_move_the_series_seen_time(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 1000)
    cycle.run(TENANTS, PLANS, now=clock.step())
    first = ledger.get_checkpoint("metering")["gpu"]  # type: ignore[index]
    cycle.run(TENANTS, PLANS, now=clock.step())
    assert ledger.get_checkpoint("metering")["gpu"] == first  # type: ignore[index]


def test_token_only_history_then_gpu_series_count_from_zero(ledger: Ledger) -> None:
    """The baseline is the metering start, once: a GPU series that appears later is new."""
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series(), 5000)
    cycle.run(TENANTS, PLANS, now=clock.step())
    assert gpu_totals(ledger) == {"acme": (5000, 0)}
    assert UNASSIGNED not in gpu_totals(ledger)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        MeteringConfig(max_token_rate=0)
    with pytest.raises(ValueError):
        MeteringConfig(gpu_tolerance=timedelta(seconds=-1))
    with pytest.raises(ValueError):
        MeteringConfig(max_tombstones=-1)
    assert MeteringConfig(tombstone_retention=timedelta(0)).retention == timedelta(hours=2)


def test_unknown_tenants_namespace_is_reported_without_a_tenant(ledger: Ledger) -> None:
    prom, clock = FakePrometheus(), Clock()
    cycle = make(ledger, prom)
    start(cycle, clock)
    put(prom, series("nobody", "x", job="other"), 10)
    r = cycle.run([*TENANTS, tenant("zeta", ["zz"])], PLANS, now=clock.step())
    assert [(u.namespace, u.tenant) for u in r.untrusted] == [("nobody", "")]
    assert datetime.now(UTC) > T0  # the fixture's clock is simulated, the test's is not
