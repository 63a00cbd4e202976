"""The time-axis fake Prometheus (``support.timeaxis``): range edges, absent series, the one
query form it answers, failure switches, the simulated targets and the ground-truth helpers.

Its answers are checked against a real Prometheus in
``tests/integration/metering/test_timeaxis_conformance.py``; here the Prometheus 3 default
(a left-open range) and everything that needs no server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import InputError, KubemeterError, TransientError
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import MeteringConfig, MeteringCycle, Prometheus
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.prometheus import last_value_query
from kubemeter_operator.usage.tenancy import UNASSIGNED

from support.timeaxis import (
    ACTIVE,
    ALLOCATED,
    VLLM_GENERATION,
    VLLM_PROMPT,
    FakePrometheus,
    GpuExporter,
    Scraper,
    SeriesStore,
    TokenServer,
    UnsupportedQueryError,
    group_sum,
    label_set,
    parse_query,
    to_ms,
)

T0 = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
H100 = "NVIDIA H100 80GB HBM3"


def store_with(
    *points: tuple[dict[str, str], datetime, float], metric: str = "m_total"
) -> SeriesStore:
    store = SeriesStore()
    for labels, at, value in points:
        store.append(metric, labels, at, value)
    return store


def values(fake: FakePrometheus, promql: str, at: datetime) -> list[float]:
    return [s.value for s in fake.query(promql, at)]


# ---------------------------------------------------------------- the query


def test_range_is_left_open_and_right_closed() -> None:
    fake = FakePrometheus(store_with(({"a": "x"}, T0, 7)))
    q = last_value_query("m_total", 15_000)
    assert values(fake, q, T0 - MS) == []
    assert values(fake, q, T0) == [7]  # right end included
    assert values(fake, q, T0 + 15_000 * MS - MS) == [7]
    assert values(fake, q, T0 + 15_000 * MS) == []  # Prometheus 3: left end excluded


def test_prometheus_2_range_includes_its_left_end() -> None:
    fake = FakePrometheus(store_with(({"a": "x"}, T0, 7)), left_open=False)
    q = last_value_query("m_total", 15_000)
    assert values(fake, q, T0 + 15_000 * MS) == [7]
    assert values(fake, q, T0 + 15_001 * MS) == []


def test_the_last_sample_in_range_is_returned_without_the_metric_name() -> None:
    fake = FakePrometheus(
        store_with(
            ({"a": "x"}, T0, 1),
            ({"a": "x"}, T0 + timedelta(seconds=15), 2),
            ({"a": "x"}, T0 + timedelta(seconds=30), 3),
            ({"a": "y"}, T0, 10),
        )
    )
    q = last_value_query("m_total", 60_000)
    got = fake.query(q, T0 + timedelta(seconds=29))
    assert [(dict(s.labels), s.value) for s in got] == [({"a": "x"}, 2), ({"a": "y"}, 10)]
    assert all("__name__" not in s.labels for s in got)


def test_a_series_with_no_sample_in_range_is_absent() -> None:
    fake = FakePrometheus(
        store_with(({"a": "stopped"}, T0, 1), ({"a": "live"}, T0 + timedelta(minutes=5), 2))
    )
    got = fake.query(last_value_query("m_total", 60_000), T0 + timedelta(minutes=5))
    assert [dict(s.labels) for s in got] == [{"a": "live"}]
    assert fake.query(last_value_query("other_total", 60_000), T0) == []


def test_equality_matchers_with_escaped_and_empty_values() -> None:
    odd = 'a"b\\c\nd'
    store = store_with(
        ({"ns": odd, "mig_profile": "1g.10gb"}, T0, 1),
        ({"ns": odd, "mig_profile": ""}, T0, 2),  # stored without mig_profile
        ({"ns": "plain"}, T0, 3),
    )
    fake = FakePrometheus(store)
    assert sorted(values(fake, last_value_query("m_total", 1000, {"ns": odd}), T0)) == [1, 2]
    assert values(fake, last_value_query("m_total", 1000, {"mig_profile": ""}), T0) == [2, 3]
    both = {"ns": odd, "mig_profile": "1g.10gb"}
    assert values(fake, last_value_query("m_total", 1000, both), T0) == [1]
    assert values(fake, last_value_query("m_total", 1000, {"ns": "none"}), T0) == []
    assert parse_query(last_value_query("m_total", 5, {"ns": odd})).matchers == (("ns", odd),)


def test_empty_label_values_are_dropped_on_append() -> None:
    store = store_with(({"namespace": "", "pod": "", "gpu_uuid": "GPU-1"}, T0, 5))
    (series,) = store.series()
    assert series.key.labels == (("gpu_uuid", "GPU-1"),)
    (sample,) = FakePrometheus(store).query(last_value_query("m_total", 1000), T0)
    assert dict(sample.labels) == {"gpu_uuid": "GPU-1"}


def test_the_evaluation_time_is_rounded_to_the_millisecond() -> None:
    fake = FakePrometheus(store_with(({"a": "x"}, T0 + MS, 1)))
    q = last_value_query("m_total", 1000)
    assert values(fake, q, T0 + timedelta(microseconds=499)) == []
    assert values(fake, q, T0 + timedelta(microseconds=500)) == [1]


@pytest.mark.parametrize(
    "promql",
    [
        "m_total",
        "rate(m_total[5m])",
        "increase(m_total[300000ms])",
        "last_over_time(m_total[5m])",
        "last_over_time(m_total[0ms])",
        "last_over_time(m_total[1500ms] offset 1m)",
        "last_over_time(m_total[1500ms] @ 1793491200)",
        'last_over_time(m_total{a=~"x.*"}[1500ms])',
        'last_over_time(m_total{a!="x"}[1500ms])',
        'last_over_time(m_total{a="x",}[1500ms])',
        'last_over_time(m_total{a="x" , b="y"}[1500ms])',
        'last_over_time(m_total{a="\\t"}[1500ms])',
        "sum(last_over_time(m_total[1500ms]))",
        "last_over_time(m_total[1500ms]) > 0",
    ],
)
def test_any_other_query_is_refused_loudly(promql: str) -> None:
    fake = FakePrometheus(store_with(({"a": "x"}, T0, 1)))
    with pytest.raises(UnsupportedQueryError) as info:
        fake.query(promql, T0)
    assert not isinstance(info.value, KubemeterError)  # the cycle must not swallow it
    assert fake.refused == [promql]


def test_down_raises_transient_error_like_the_real_client() -> None:
    fake = FakePrometheus(store_with(({"a": "x"}, T0, 1)))
    q = last_value_query("m_total", 1000)
    fake.down = True
    with pytest.raises(TransientError, match="unreachable"):
        fake.query(q, T0)
    assert not fake.healthy()
    fake.down = False
    assert values(fake, q, T0) == [1]
    fake.failing_metrics.add("m_total")
    with pytest.raises(TransientError):
        fake.query(q, T0)
    assert fake.queries == 3
    assert [p for p, _ in fake.recent] == [q, q, q]


def test_a_naive_evaluation_time_is_refused_like_the_real_client() -> None:
    with pytest.raises(InputError):
        FakePrometheus().query(last_value_query("m_total", 1000), datetime(2026, 11, 1))  # noqa: DTZ001


def test_samples_must_be_appended_in_time_order() -> None:
    store = store_with(({"a": "x"}, T0, 1))
    with pytest.raises(ValueError, match="out of order"):
        store.append("m_total", {"a": "x"}, T0, 2)
    store.append("m_total", {"a": "y"}, T0 - MS, 2)  # another series may be behind
    with pytest.raises(ValueError, match="millisecond"):
        store.append("m_total", {"a": "y"}, T0 + timedelta(microseconds=1), 3)


def test_the_fake_is_the_cycles_prometheus() -> None:
    prom: Prometheus = FakePrometheus()  # structural: mypy checks the protocol here
    assert prom.query(last_value_query(ALLOCATED, 1000), T0) == []


# ---------------------------------------------------------------- simulated targets


def exporter(stop: datetime | None = None, linger: timedelta = timedelta(0)) -> GpuExporter:
    node = GpuExporter("node-1", started=T0, instance="exp-1")
    node.allocate(
        namespace="team-a",
        pod="train",
        pod_uid="u1",
        gpu_uuid="GPU-1",
        gpu_model=H100,
        start=T0,
        stop=stop,
        utilisation=Fraction(1, 3),
        linger=linger,
    )
    return node


def test_gpu_counters_are_integer_ms_with_active_at_most_allocated() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    scraper.add(exporter())
    assert scraper.advance_to(T0 + timedelta(minutes=1)) == 10  # 5 scrapes x 2 counters
    (alloc,) = store.series(ALLOCATED)
    (active,) = store.series(ACTIVE)
    assert list(alloc.times) == [to_ms(T0) + k * 15_000 for k in range(5)]
    assert list(alloc.values) == [k * 15_000 for k in range(5)]
    assert list(active.values) == [k * 5_000 for k in range(5)]
    labels = alloc.key.label_dict
    assert labels["exporter_instance"] == "exp-1"
    assert "mig_profile" not in labels
    assert set(labels) == {
        "node",
        "gpu_uuid",
        "gpu_model",
        "namespace",
        "pod",
        "pod_uid",
        "exporter_instance",
    }


def test_uneven_utilisation_rounds_down_and_never_drifts() -> None:
    node = GpuExporter("n", started=T0)
    a = node.allocate(
        namespace="x",
        pod="p",
        pod_uid="u",
        gpu_uuid="G",
        gpu_model=H100,
        start=T0,
        utilisation="0.7",
    )
    for ms in (1, 7, 15_001, 86_400_000 * 31 + 3):
        counters = node.counters(a, to_ms(T0) + ms)
        assert counters == (ms, ms * 7 // 10)


def test_scrape_offsets_and_target_labels_keep_the_targets_own() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    server = TokenServer(namespace="team-b", pod="infer", model="m", started=T0, prompt_per_s=2)
    scraper.add(server, offset=timedelta(seconds=3.25), labels={"job": "vllm", "pod": "spoof"})
    scraper.advance_to(T0 + timedelta(seconds=20))
    s = store.get(
        VLLM_PROMPT, {"job": "vllm", "namespace": "team-b", "pod": "infer", "model_name": "m"}
    )
    assert s is not None
    assert list(s.samples()) == [(to_ms(T0) + 3_250, 6.0), (to_ms(T0) + 18_250, 36.0)]


def test_a_gap_writes_nothing_and_the_counter_keeps_growing() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    node = exporter()
    scraper.add(node)
    scraper.gap(T0 + timedelta(seconds=15), T0 + timedelta(seconds=45))
    scraper.advance_to(T0 + timedelta(minutes=1))
    (alloc,) = store.series(ALLOCATED)
    assert list(alloc.samples()) == [
        (to_ms(T0), 0.0),
        (to_ms(T0) + 45_000, 45_000.0),
        (to_ms(T0) + 60_000, 60_000.0),
    ]
    with pytest.raises(ValueError, match="already written"):
        scraper.gap(T0, T0 + timedelta(hours=1))


def test_an_exporter_restart_is_a_new_series_from_zero() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    node = exporter()
    node.restart(T0 + timedelta(seconds=20), "exp-2")
    scraper.add(node)
    scraper.advance_to(T0 + timedelta(seconds=45))
    old, new = store.series(ALLOCATED)
    assert old.key.label_dict["exporter_instance"] == "exp-1"
    assert list(old.values) == [0, 15_000]
    assert new.key.label_dict["exporter_instance"] == "exp-2"
    assert list(new.samples()) == [(to_ms(T0) + 30_000, 10_000.0), (to_ms(T0) + 45_000, 25_000.0)]
    with pytest.raises(ValueError, match="already scraped"):
        node.restart(T0 + timedelta(seconds=40), "exp-3")


def test_a_stopped_pod_has_no_more_samples_unless_its_series_linger() -> None:
    stop = T0 + timedelta(seconds=20)
    for linger, expected in (
        (timedelta(0), [0, 15_000]),
        (timedelta(seconds=30), [0, 15_000, 20_000, 20_000]),
    ):
        store = SeriesStore()
        scraper = Scraper(store, start=T0)
        scraper.add(exporter(stop=stop, linger=linger))
        scraper.advance_to(T0 + timedelta(minutes=2))
        (alloc,) = store.series(ALLOCATED)
        assert list(alloc.values) == expected


def test_token_counters_follow_rates_restarts_and_stop() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    server = TokenServer(
        namespace="team-b",
        pod="infer",
        model="m",
        started=T0,
        prompt_per_s="0.1",
        generation_per_s=3,
    )
    server.set_rate(T0 + timedelta(seconds=30), VLLM_PROMPT, 100)
    server.restart(T0 + timedelta(seconds=50))
    server.stop(T0 + timedelta(seconds=75))
    scraper.add(server)
    scraper.advance_to(T0 + timedelta(minutes=2))
    prompt = store.series(VLLM_PROMPT)[0]
    generation = store.series(VLLM_GENERATION)[0]
    assert list(prompt.values) == [0, 1, 3, 3 + 1500, 1000]
    assert list(generation.values) == [0, 45, 90, 135, 30]
    assert prompt.times[-1] == to_ms(T0) + 60_000
    assert server.value(VLLM_PROMPT, to_ms(T0) + 60_000) == 1000


def test_the_simulation_is_deterministic() -> None:
    def run() -> list[tuple[object, list[int], list[float]]]:
        store = SeriesStore()
        scraper = Scraper(store, start=T0)
        scraper.add(exporter(stop=T0 + timedelta(hours=1)), offset=timedelta(seconds=1.5))
        scraper.add(
            TokenServer(namespace="a", pod="b", model="m", started=T0, prompt_per_s="12.34")
        )
        scraper.advance_to(T0 + timedelta(hours=2))
        return [(s.key, list(s.times), list(s.values)) for s in store.series()]

    assert run() == run()


# ---------------------------------------------------------------- ground truth


def test_values_at_and_increase_read_the_last_sample_at_or_before() -> None:
    store = SeriesStore()
    scraper = Scraper(store, start=T0)
    node = exporter()
    node.restart(T0 + timedelta(minutes=1), "exp-2")
    scraper.add(node)
    scraper.advance_to(T0 + timedelta(minutes=2))
    t = T0 + timedelta(seconds=50)
    assert sorted(store.values_at(ALLOCATED, t).values()) == [45_000]
    inc = store.increase(ALLOCATED, t, T0 + timedelta(minutes=2))
    by_instance = group_sum(inc, ["exporter_instance"])
    assert by_instance == {("exp-1",): 0.0, ("exp-2",): 60_000.0}
    assert store.value_at(ALLOCATED, {"pod": "nope"}, t) is None


def test_windowed_increase_counts_an_in_place_reset_like_the_cycle() -> None:
    store = store_with(
        ({"a": "x"}, T0, 100),
        ({"a": "x"}, T0 + timedelta(seconds=15), 130),
        ({"a": "x"}, T0 + timedelta(seconds=30), 20),
        ({"a": "x"}, T0 + timedelta(seconds=45), 50),
    )
    ends = [T0 + timedelta(seconds=s) for s in (0, 15, 30, 45)]
    assert store.windowed_increase("m_total", ends) == {label_set({"a": "x"}): 30 + 20 + 30}
    assert store.increase("m_total", ends[0], ends[-1]) == {label_set({"a": "x"}): -50}
    before = [T0 - timedelta(seconds=1), *ends]
    assert store.windowed_increase("m_total", before) == {label_set({"a": "x"}): 180}


# ---------------------------------------------------------------- the cycle on the fake


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as led:
        yield led


def test_the_cycle_on_the_fake_bills_the_ground_truth_per_period(ledger: Ledger) -> None:
    """An hour across midnight, a restart and a gap: what the cycle bills per period is what
    the stored samples say, computed without the operator's code."""
    midnight = datetime(2026, 11, 1, tzinfo=UTC)
    store = SeriesStore()
    scraper = Scraper(store, start=T0 + timedelta(minutes=30))
    node = GpuExporter("node-1", started=T0, instance="exp-1")
    for ns, pod, gpu, util in (("team-a", "train", "GPU-1", "0.9"), ("team-z", "x", "GPU-2", 1)):
        node.allocate(
            namespace=ns,
            pod=pod,
            pod_uid=f"uid-{pod}",
            gpu_uuid=gpu,
            gpu_model=H100,
            start=T0 + timedelta(minutes=45),
            utilisation=util,
        )
    node.restart(midnight + timedelta(minutes=7, seconds=3), "exp-2")
    scraper.add(node, offset=timedelta(seconds=4.5), labels={"job": "kubemeter-exporter"})
    scraper.gap(midnight - timedelta(minutes=4), midnight + timedelta(minutes=3))
    fake = FakePrometheus(store)
    tenants = [
        Tenant.model_validate(
            {
                "metadata": {"name": "acme", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"pricePlanRef": {"name": "std"}, "namespaces": ["team-a"]},
            }
        )
    ]
    plans = {
        "std": PricePlanSpec.model_validate(
            {
                "currency": "USD",
                "meters": [
                    {
                        "name": "gpu",
                        "kind": "gpuTime",
                        "unit": "gpu-hour",
                        "pricing": {"model": "flat", "unitPrice": "2"},
                    }
                ],
            }
        )
    }
    pods = StaticPodDirectory([PodMeta("team-a", "train", "uid-train")])
    cycle = MeteringCycle(
        ledger, fake, pods, MeteringConfig(), metrics=MeteringMetrics(CollectorRegistry())
    )
    billed: dict[tuple[str, str], list[int]] = {}
    end = midnight + timedelta(minutes=30)
    now = T0 + timedelta(minutes=31)
    last_end = now
    while now <= end:
        scraper.advance_to(now)
        while True:
            r = cycle.run(tenants, plans, now=now)
            if r.window is None:
                break
            last_end = r.window.end
            for tenant, usage in r.tenants.items():
                acc = billed.setdefault((str(r.window.period), tenant), [0, 0])
                acc[0] += usage.allocated_ms
                acc[1] += usage.active_ms
            if not r.behind:
                break
        now += timedelta(seconds=15)
    assert not fake.refused

    def truth(start: datetime, stop: datetime) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, metric in enumerate((ALLOCATED, ACTIVE)):
            per_ns = group_sum(store.increase(metric, start, stop), ["namespace"])
            for (ns,), v in per_ns.items():
                tenant = "acme" if ns == "team-a" else UNASSIGNED
                out.setdefault(tenant, [0, 0])[i] += int(v)
        return out

    oct_truth, nov_truth = truth(T0, midnight), truth(midnight, last_end)
    assert {t: v for (p, t), v in billed.items() if p == "2026-10"} == oct_truth
    assert {t: v for (p, t), v in billed.items() if p == "2026-11"} == nov_truth
    assert oct_truth["acme"][0] > 0
    assert nov_truth["acme"][0] > 0
    assert last_end == end - timedelta(seconds=30)
