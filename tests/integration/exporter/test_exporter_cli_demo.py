"""`kubemeter-exporter --simulate examples/scenarios/demo.yaml` serves live counters."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubemeter_exporter import contract as c

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _allocated(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == c.GPU_ALLOCATED_MS.name:
                out[f"{s.labels['namespace']}/{s.labels['pod']}"] = s.value
    return out


def test_demo_scenario_serves_growing_counters() -> None:
    script = Path(sys.executable).parent / "kubemeter-exporter"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "kubemeter_exporter.cli"]
    port = _port()
    proc = subprocess.Popen(
        [
            *cmd,
            "--simulate",
            str(ROOT / "examples/scenarios/demo.yaml"),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "200ms",
            "--speed",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        first: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                first = _allocated(url)
                if first:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(1.0)
        second = _allocated(url)
        assert "team-a/trainer-0" in second
        assert second["team-a/trainer-0"] > first.get("team-a/trainer-0", 0)
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out.decode()
