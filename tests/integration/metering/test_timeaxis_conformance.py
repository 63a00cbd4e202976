"""The time-axis fake answers exactly as a real Prometheus does, on the same samples.

One deterministic scenario across the October/November 2026 boundary (22:00Z to 02:00Z,
15 s scrapes): two GPU exporters (a whole GPU, a MIG instance that stops early, an
unattributed series with empty labels, a pod whose series linger after it stopped, an
exporter restart with a new ``exporter_instance`` and a 40 s outage around it), two
vLLM-style token servers (a rate change, an in-place counter reset, a label value that needs
escaping, one that stops exactly at midnight), target labels, and a 10-minute scrape gap.

The samples go into the fake (``support.timeaxis``) and, through promtool, into a real
Prometheus (``support.backfill``). At many evaluation times (the metering grid; on, just
before and just after sample timestamps; exactly ``span`` after them, the range's left edge;
inside the gap; after series stopped; at midnight) the real client's answers
(``PrometheusClient.query``) and the fake's must be identical, labels and values, for both
GPU counters and both token counters, with and without label matchers. The fake follows the
server's range semantics (left-open from Prometheus 3, closed before), read from its build
info; the unit tests pin the Prometheus 3 default.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kubemeter_operator.metering.prometheus import PrometheusClient, Sample, last_value_query

from support.backfill import (
    backfilled_prometheus,
    prometheus_version,
    range_is_left_open,
    require_promtool,
)
from support.prometheus import PrometheusServer
from support.timeaxis import (
    ACTIVE,
    ALLOCATED,
    VLLM_GENERATION,
    VLLM_PROMPT,
    FakePrometheus,
    GpuExporter,
    LabelSet,
    Scraper,
    SeriesStore,
    TokenServer,
    from_ms,
    label_set,
    to_ms,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 31, 22, 0, tzinfo=UTC)
END = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 11, 1, tzinfo=UTC)
GAP = (datetime(2026, 10, 31, 23, 10, tzinfo=UTC), datetime(2026, 10, 31, 23, 20, tzinfo=UTC))
RESTART = datetime(2026, 11, 1, 0, 30, 0, 250_000, tzinfo=UTC)
RESTART_OUTAGE = (RESTART - timedelta(seconds=10), RESTART + timedelta(seconds=30))
BATCH_STOP = datetime(2026, 10, 31, 23, 47, 31, 250_000, tzinfo=UTC)
INFER_STOP = datetime(2026, 11, 1, 1, 15, tzinfo=UTC)
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ENGINE = 'v"0\\1'
SPANS = (15_000, 135_000, 420_000, 3_720_000)
"""The scrape interval, the cycle's usual span (15 s + 2 min), a caught-up 5 min window's,
the very first window's (1 h + 2 min)."""
METRICS = (ALLOCATED, ACTIVE, VLLM_PROMPT, VLLM_GENERATION)
MATCHERS: tuple[Mapping[str, str], ...] = (
    {"namespace": "team-a"},
    {"mig_profile": ""},
    {"namespace": ""},
    {"exporter_instance": "exp-n1-b"},
    {"engine": ENGINE},
    {"model_name": LLAMA, "namespace": "team-b"},
    {"pod": "no-such-pod"},
)


@dataclass
class World:
    store: SeriesStore
    scraper: Scraper
    node1: GpuExporter
    node2: GpuExporter
    llama: TokenServer
    qwen: TokenServer
    fake: FakePrometheus = field(init=False)
    real: PrometheusClient = field(init=False)
    server: PrometheusServer = field(init=False)


def build_world() -> World:
    store = SeriesStore()
    scraper = Scraper(store, start=START)
    before = START - timedelta(hours=1)

    node1 = GpuExporter("node-1", started=before, instance="exp-n1-a")
    node1.allocate(
        namespace="team-a",
        pod="trainer-0",
        pod_uid="uid-a",
        gpu_uuid="GPU-1",
        gpu_model="NVIDIA H100 80GB HBM3",
        start=before + timedelta(minutes=30),
        utilisation="0.8",
    )
    node1.allocate(
        namespace="team-a",
        pod="batch",
        pod_uid="uid-b",
        gpu_uuid="MIG-1",
        gpu_model="NVIDIA A100-SXM4-80GB",
        mig_profile="3g.40gb",
        start=datetime(2026, 10, 31, 22, 5, 2, 500_000, tzinfo=UTC),
        stop=BATCH_STOP,
        utilisation="0.35",
    )
    node1.allocate(
        namespace="",
        pod="",
        pod_uid="",
        gpu_uuid="GPU-2",
        gpu_model="NVIDIA H100 80GB HBM3",
        start=START,
        utilisation="0.1",
    )
    node1.restart(RESTART, "exp-n1-b")

    node2 = GpuExporter("node-2", started=before, instance="exp-n2-a")
    node2.allocate(
        namespace="team-b",
        pod="infer-0",
        pod_uid="uid-c",
        gpu_uuid="GPU-3",
        gpu_model="NVIDIA L4",
        start=before,
        stop=INFER_STOP,
        utilisation="1/3",
        linger=timedelta(minutes=5),
    )

    llama = TokenServer(
        namespace="team-b",
        pod="infer-0",
        model=LLAMA,
        started=before,
        prompt_per_s="123.4",
        generation_per_s=45,
        extra_labels={"engine": ENGINE},
    )
    llama.set_rate(datetime(2026, 10, 31, 23, 30, tzinfo=UTC), VLLM_PROMPT, 500)
    llama.restart(datetime(2026, 11, 1, 1, 0, tzinfo=UTC))
    qwen = TokenServer(
        namespace="team-c",
        pod="chat-0",
        model="qwen",
        started=START + timedelta(minutes=1),
        prompt_per_s=10,
        generation_per_s="3.3",
    )
    qwen.stop(MIDNIGHT)

    exporter_job = {"job": "kubemeter-exporter"}
    scraper.add(node1, labels={**exporter_job, "instance": "10.0.0.1:9400"})
    scraper.add(
        node2, offset=timedelta(seconds=7.321), labels={**exporter_job, "instance": "10.0.0.2:9400"}
    )
    scraper.add(
        llama, offset=timedelta(seconds=3.5), labels={"job": "vllm", "instance": "10.0.1.5:8000"}
    )
    scraper.add(qwen, offset=timedelta(seconds=11), labels={"job": "vllm"})
    scraper.gap(*GAP)
    scraper.gap(*RESTART_OUTAGE, target=node1)
    scraper.advance_to(END)
    return World(store, scraper, node1, node2, llama, qwen)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_promtool()
    w = build_world()
    root: Path = tmp_path_factory.mktemp("backfill")
    w.server = backfilled_prometheus(w.store, root)
    try:
        w.real = PrometheusClient(w.server.url)
        w.fake = FakePrometheus(w.store, left_open=range_is_left_open(w.server.url))
        yield w
    finally:
        w.server.close()


Answer = list[tuple[LabelSet, float]]


def answer(samples: Iterable[Sample]) -> Answer:
    return sorted((label_set(s.labels), s.value) for s in samples)


@dataclass
class Tally:
    compared: int = 0
    nonempty: int = 0
    mismatches: list[str] = field(default_factory=list)


def real_answers(url: str, queries: Sequence[tuple[str, int]]) -> list[Answer]:
    """The real server's answers through the real client (8 clients in parallel)."""
    local = threading.local()

    def one(query: tuple[str, int]) -> Answer:
        client: PrometheusClient | None = getattr(local, "client", None)
        if client is None:
            client = local.client = PrometheusClient(url)
        return answer(client.query(query[0], from_ms(query[1])))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, queries))


def compare(world: World, queries: Sequence[tuple[str, int]]) -> Tally:
    tally = Tally()
    for (promql, t), real in zip(queries, real_answers(world.server.url, queries), strict=True):
        at = from_ms(t)
        fake = answer(world.fake.query(promql, at))
        tally.compared += 1
        tally.nonempty += bool(real)
        if real != fake:
            tally.mismatches.append(f"{promql} @ {at.isoformat()}:\n  real {real}\n  fake {fake}")
    assert not world.fake.refused
    return tally


def assert_identical(tally: Tally) -> None:
    shown = "\n".join(tally.mismatches[:10])
    assert not tally.mismatches, f"{len(tally.mismatches)}/{tally.compared} differ:\n{shown}"


def sample_edges(world: World) -> set[tuple[int, int]]:
    """(at, span) pairs around chosen sample timestamps: on, 1 ms before and after, and at
    the left edge of each span (span - 1, span, span + 1 ms later)."""
    chosen: set[int] = set()
    for s in world.store.series():
        times = list(s.times)
        chosen.update(times[:2] + times[-2:])
        for edge in (*GAP, *RESTART_OUTAGE, MIDNIGHT, BATCH_STOP, INFER_STOP):
            e = to_ms(edge)
            chosen.update(t for t in times if e - 31_000 <= t <= e + 31_000)
    pairs: set[tuple[int, int]] = set()
    for ts in chosen:
        for span in SPANS:
            for d in (-1, 0, 1):
                pairs.add((ts + d, span))
                pairs.add((ts + span + d, span))
    return pairs


def fixed_times() -> list[int]:
    marks = [
        START - timedelta(milliseconds=1),
        START,
        GAP[0],
        GAP[0] + timedelta(minutes=5),
        GAP[1] - timedelta(milliseconds=1),
        GAP[1],
        RESTART,
        MIDNIGHT,
        BATCH_STOP,
        INFER_STOP,
        END,
        END + timedelta(minutes=30),
    ]
    out: list[int] = []
    for m in marks:
        out.extend(to_ms(m) + d for d in (-1, 0, 1))
    return out


# ---------------------------------------------------------------- tests


def test_backfilled_history_is_served_as_soon_as_prometheus_is_ready(world: World) -> None:
    # backfilled_prometheus already checked that every series is listed; the history (weeks
    # old when this was written) must answer queries too, right away
    for metric in METRICS:
        real = world.real.query(last_value_query(metric, 3_720_000), MIDNIGHT)
        assert len(real) == len(world.store.values_at(metric, MIDNIGHT)) > 0
    version = prometheus_version(world.server.url)
    assert world.fake.left_open == (version[0] >= 3)


def test_gpu_counters_match_on_the_metering_grid(world: World) -> None:
    step = 15_000
    first, last = to_ms(START - timedelta(minutes=1)), to_ms(END + timedelta(minutes=10))
    queries = [
        (last_value_query(metric, span), t)
        for t in range(first, last + 1, step)
        for metric in (ALLOCATED, ACTIVE)
        for span in SPANS[:2]
    ]
    tally = compare(world, queries)
    assert_identical(tally)
    assert 0 < tally.nonempty < tally.compared


def test_every_counter_matches_at_sample_edges(world: World) -> None:
    pairs = sorted(sample_edges(world) | {(t, s) for t in fixed_times() for s in SPANS})
    queries = [(last_value_query(m, span), t) for t, span in pairs for m in METRICS]
    tally = compare(world, queries)
    assert_identical(tally)
    assert 0 < tally.nonempty < tally.compared


def test_label_matchers_match(world: World) -> None:
    times = list(range(to_ms(START), to_ms(END) + 1, 300_000))
    times += [t + d for t in (to_ms(MIDNIGHT), to_ms(RESTART)) for d in (-15_000, -1, 0, 1, 15_000)]
    queries = [
        (last_value_query(m, 135_000, labels), t)
        for t in times
        for m in METRICS
        for labels in MATCHERS
    ]
    tally = compare(world, queries)
    assert_identical(tally)
    assert 0 < tally.nonempty < tally.compared


def test_ground_truth_equals_prometheus_last_values(world: World) -> None:
    """``store.values_at`` (the oracle) is what Prometheus holds: the last sample <= t."""
    times = [*range(to_ms(START), to_ms(END) + 1, 600_000), *fixed_times()]
    for t in times:
        for metric in METRICS:
            real = answer(world.real.query(last_value_query(metric, 36_000_000), from_ms(t)))
            truth = sorted(world.store.values_at(metric, t).items())
            assert real == truth, (metric, from_ms(t))


def test_the_scenario_has_what_it_claims(world: World) -> None:
    """Guards against a vacuous comparison: each feature is visible in the answers."""
    fake = world.fake

    def pods(metric: str, t: datetime, span: int, **labels: str) -> list[dict[str, str]]:
        return [dict(s.labels) for s in fake.query(last_value_query(metric, span, labels), t)]

    # the gap: no sample within 15 s anywhere in it
    assert all(not pods(m, GAP[0] + timedelta(minutes=5), 15_000) for m in METRICS)
    # the restart: both exporter instances of node-1 visible just after it, the new from 0
    after = RESTART_OUTAGE[1] + timedelta(seconds=15)
    instances = {p["exporter_instance"] for p in pods(ALLOCATED, after, 135_000, node="node-1")}
    assert instances == {"exp-n1-a", "exp-n1-b"}
    fresh = {"exporter_instance": "exp-n1-b", "pod": "trainer-0"}
    first = world.scraper.scrape_times(world.node1, RESTART_OUTAGE[1], END)[0]
    (new,) = fake.query(last_value_query(ALLOCATED, 15_000, fresh), from_ms(first))
    assert new.value == first - to_ms(RESTART)
    # the batch pod stopped: gone once its last sample is out of range
    assert any(p.get("pod") == "batch" for p in pods(ALLOCATED, BATCH_STOP, 15_000))
    gone = BATCH_STOP + timedelta(milliseconds=135_001)
    assert not any(p.get("pod") == "batch" for p in pods(ALLOCATED, gone, 135_000))
    # empty labels are absent, target labels present, whole GPUs carry no mig_profile
    series = pods(ALLOCATED, BATCH_STOP - timedelta(minutes=1), 135_000)
    unattributed = [p for p in series if "pod" not in p]
    assert len(unattributed) == 1
    assert "namespace" not in unattributed[0]
    assert all(p["job"] == "kubemeter-exporter" for p in series)
    assert {p.get("mig_profile", "") for p in series} == {"", "3g.40gb"}
    # the infer pod's series lingers, flat, after the pod stopped
    lingering = INFER_STOP + timedelta(minutes=4)
    (flat,) = fake.query(last_value_query(ALLOCATED, 15_000, {"pod": "infer-0"}), lingering)
    assert flat.value == to_ms(INFER_STOP) - to_ms(START - timedelta(hours=1))
    # tokens: the in-place reset and the stop at midnight
    reset = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
    scraped = {**world.llama.labels, "job": "vllm", "instance": "10.0.1.5:8000"}
    v_before = world.store.value_at(VLLM_PROMPT, scraped, reset)
    v_after = world.store.value_at(VLLM_PROMPT, scraped, reset + timedelta(seconds=30))
    assert v_before is not None
    assert v_after is not None
    assert v_after < v_before
    assert pods(VLLM_PROMPT, MIDNIGHT, 15_000, pod="chat-0")
    assert not pods(VLLM_PROMPT, MIDNIGHT + timedelta(seconds=15), 15_000, pod="chat-0")
    # the escaped label value round-trips through the selector
    assert pods(VLLM_GENERATION, MIDNIGHT, 135_000, engine=ENGINE)
