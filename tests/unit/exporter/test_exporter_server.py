"""/metrics matches the contract; /healthz."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubemeter_exporter import contract as c
from kubemeter_exporter.server import ExporterServer

ROOT = Path(__file__).resolve().parents[3]


def test_metrics_follow_the_contract(sim_rig: Any) -> None:
    from kubemeter_exporter.scenario import Scenario

    sc = Scenario.load(ROOT / "examples" / "scenarios" / "demo.yaml")
    rig = sim_rig(sc.model_dump())
    rig.run_until(40)
    server = ExporterServer(rig.collector, "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()
    specs = {s.name: s for s in c.ALL_METRICS}
    seen: set[str] = set()
    for fam in text_string_to_metric_families(body):
        for sample in fam.samples:
            if sample.name.endswith("_created"):
                continue
            spec = specs[sample.name]
            seen.add(sample.name)
            assert set(sample.labels) == set(spec.labels), sample.name
            if spec.type == "counter":
                assert fam.type == "counter"
                assert float(sample.value).is_integer()
    assert c.GPU_ALLOCATED_MS.name in seen
    assert c.GPU_ACTIVE_MS.name in seen
    assert c.GPU_INFO.name in seen
    assert c.EXPORTER_INFO.name in seen
    assert 'mig_profile="1g.10gb"' in body
    assert 'gpu_model="NVIDIA H100 80GB HBM3"' in body


def test_healthz_reports_stalled_loop(sim_rig: Any) -> None:
    rig = sim_rig({"gpus": [{"uuid": "GPU-a"}]})
    server = ExporterServer(rig.collector, "127.0.0.1", 0)
    ok, text = server.health()
    assert ok
    assert "starting" in text
    rig.collector.sample()
    assert server.health()[0]
    rig.clock.advance(100)
    ok, text = server.health()
    assert not ok
    assert "stalled" in text
    server.httpd.server_close()


def test_contract_specs_are_consistent() -> None:
    names = [s.name for s in c.ALL_METRICS]
    assert len(names) == len(set(names))
    for s in c.ALL_METRICS:
        assert s.name.startswith("kubemeter_")
        assert (s.type == "counter") == s.name.endswith("_total")
        assert len(set(s.labels)) == len(s.labels)
    assert c.GPU_ALLOCATED_MS.family == "kubemeter_gpu_allocated_milliseconds"
