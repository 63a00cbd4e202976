"""A real Prometheus scrapes the running exporter (simulated NVML, real time, speed 1);
PromQL over its counters returns the scenario's truth within 0.1 %."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemeter_exporter import contract as c

pytestmark = pytest.mark.integration

GPU = "GPU-aaaaaaaa-0000-0000-0000-0000000000aa"
MIG_PARENT = "GPU-bbbbbbbb-0000-0000-0000-0000000000bb"
MIG = "MIG-bbbbbbbb-1111-0000-0000-0000000000bb"

SCENARIO: dict[str, Any] = {
    "node": "prom-node",
    "gpus": [
        {"uuid": GPU, "model": "NVIDIA H100 80GB HBM3"},
        {
            "uuid": MIG_PARENT,
            "model": "NVIDIA A100-SXM4-80GB",
            "mig": [{"uuid": MIG, "profile": "1g.10gb", "memory_mib": 9728}],
        },
    ],
    "pods": [
        {
            "namespace": "team-a",
            "name": "train",
            "uid": "aaaaaaaa-1111-4111-8111-111111111111",
            "allocations": [{"devices": [f"{GPU}::0"], "start": 2, "end": 22}],
        },
        {
            "namespace": "team-b",
            "name": "infer",
            "uid": "bbbbbbbb-2222-4222-8222-222222222222",
            "runtime": "crio",
            "allocations": [{"devices": [f"{GPU}::1"], "start": 4, "end": 18}],
        },
        {
            "namespace": "team-c",
            "name": "nb",
            "uid": "cccccccc-3333-4333-8333-333333333333",
            "allocations": [{"devices": [MIG], "start": 3, "end": 13}],
        },
    ],
    "processes": [
        {"pid": 100, "pod": "team-a/train", "device": GPU, "sm_util": 50, "start": 2, "end": 22},
        {"pid": 200, "pod": "team-b/infer", "device": GPU, "sm_util": 20, "start": 4, "end": 18},
        {"pid": 300, "pod": "team-c/nb", "device": MIG, "sm_util": 60, "start": 3, "end": 13},
    ],
}
# (allocated ms, active ms) per pod: the scenario's truth.
TRUTH = {
    "train": (20_000, 10_000),
    "infer": (14_000, 2_800),
    "nb": (10_000, 10_000),  # MIG: no utilisation from NVML -> presence
}
FLAT_AT_S = 22.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
    )
    if path is None:
        pytest.fail(
            "prometheus binary not found: install it with `apt-get install -y prometheus` "
            "(the Debian package; .ci/run installs it when missing)"
        )
    return path


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes], float]]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    port = free_port()
    log = open(tmp_path / "exporter.log", "wb")  # noqa: SIM115
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubemeter_exporter.cli",
            "--simulate",
            str(scenario),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "100ms",
            "--log-level",
            "INFO",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 20)
        yield port, proc, t0
    finally:
        stop(proc)
        log.close()
        print((tmp_path / "exporter.log").read_text())


def promql(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_exporter_truth_within_0_1_percent(
    prometheus_bin: str, exporter: tuple[int, subprocess.Popen[bytes], float], tmp_path: Path
) -> None:
    exp_port, exp_proc, t0 = exporter
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "kubemeter-exporter",
                        "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}],
                    }
                ],
            }
        )
    )
    data = tmp_path / "prom-data"
    plog = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    prom = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=plog,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        wait_http(f"{base}/-/ready", 60)
        # Let every pod finish, then give Prometheus a few scrapes of the flat counters.
        remaining = FLAT_AT_S + 4.0 - (time.monotonic() - t0)
        time.sleep(max(remaining, 3.0))  # at least a few scrapes after Prometheus is ready
        assert exp_proc.poll() is None, "exporter died"

        up = promql(base, 'up{job="kubemeter-exporter"}')
        assert up
        assert up[0]["value"][1] == "1"

        def per_pod(metric: str) -> dict[str, float]:
            q = f'sum by (pod) ({metric}{{node="prom-node", pod!=""}})'
            return {r["metric"]["pod"]: float(r["value"][1]) for r in promql(base, q)}

        allocated = per_pod(c.GPU_ALLOCATED_MS.name)
        active = per_pod(c.GPU_ACTIVE_MS.name)
        print("allocated", allocated, "active", active)
        for pod, (alloc_truth, active_truth) in TRUTH.items():
            assert allocated[pod] == pytest.approx(alloc_truth, rel=1e-3), (pod, allocated)
            assert active[pod] == pytest.approx(active_truth, rel=1e-3), (pod, active)
        # Counters are flat once the pods released their GPUs: no growth over the last 2 s.
        growth = promql(base, f"sum(delta({c.GPU_ALLOCATED_MS.name}[2s]))")
        assert float(growth[0]["value"][1]) == 0.0 if growth else True
        # The MIG series carries its profile; the GPU info names the model.
        mig = promql(base, f'{c.GPU_ALLOCATED_MS.name}{{mig_profile="1g.10gb"}}')
        assert [r["metric"]["pod"] for r in mig] == ["nb"]
        info = promql(base, f'{c.GPU_INFO.name}{{gpu_uuid="{GPU}"}}')
        assert info[0]["metric"]["gpu_model"] == "NVIDIA H100 80GB HBM3"
        einfo = promql(base, c.EXPORTER_INFO.name)
        assert einfo[0]["metric"]["backend"] == "simulated"
    finally:
        stop(prom)
        plog.close()
