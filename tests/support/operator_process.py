"""kubemeter's processes for integration tests: the simulated exporter, the operator, and a
counter server that speaks Prometheus' text format (as vLLM does).

    exporter = exporter_process(scenario, port, log=tmp / "exporter.log").start()
    operator = operator_process(cluster, prom.url, db, log=tmp / "operator.log",
                                metrics_port=free_port()).start()
    with text_exposition(registry) as port: ...             # a scrape target on 127.0.0.1
    wait_until("the status", lambda: ..., timeout=60)

Each process is a `Process` (its own session and log file; `stop` ends it, `tail` reads the
log for a failure message). The binaries are the ones installed beside this interpreter.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from support.cluster import KubeCluster

BIN = Path(sys.executable).parent


@dataclass
class Process:
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def exporter_process(
    scenario: Path, port: int, *, log: Path, node: str = "gpu-node-0", speed: int = 1,
    interval: str = "100ms",
) -> Process:  # fmt: skip
    """`kubemeter-exporter --simulate` on 127.0.0.1:`port` (pods named by the scenario)."""
    argv = [str(BIN / "kubemeter-exporter"), "--simulate", str(scenario), "--speed", str(speed),
            "--interval", interval, "--listen", f"127.0.0.1:{port}", "--node-name", node,
            "--log-level", "WARNING"]  # fmt: skip
    return Process(argv, log, dict(os.environ))


def operator_process(
    cluster: KubeCluster, prometheus_url: str, db: str, *, log: Path, metrics_port: int,
    extra: Sequence[str] = ("--standalone",),
) -> Process:  # fmt: skip
    """`kubemeter operator` against `cluster`, metering every second (lag 3 s), events API
    off, its metrics on 127.0.0.1:`metrics_port`; `extra` flags after those."""
    argv = [str(BIN / "kubemeter"), "operator", "--kubeconfig", cluster.kubeconfig,
            "--prometheus-url", prometheus_url, "--db", db, "--interval", "1", "--lag", "3",
            "--events-listen", "", "--metrics-port", str(metrics_port), "--log-level", "INFO",
            *extra]  # fmt: skip
    return Process(argv, log, {**os.environ, "KUBECONFIG": cluster.kubeconfig})


@contextmanager
def text_exposition(registry: prometheus_client.CollectorRegistry) -> Iterator[int]:
    """Serve `registry` on a free 127.0.0.1 port in the classic text format, as vLLM does
    (prometheus_client's own server would negotiate OpenMetrics, which escapes ':' in
    vLLM's metric names). Yields the port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = prometheus_client.generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def wait_until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll `fn` until it returns something truthy; fail the test with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
