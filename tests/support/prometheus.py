"""A real Prometheus for integration tests (the Debian ``prometheus`` binary).

Plain helper::

    with PrometheusServer(["127.0.0.1:9400"], data_dir=tmp / "prom") as prom:
        prom.wait_for_targets()
        prom.query("up")

Pytest plugin (register with ``-p support.prometheus`` or ``pytest_plugins =
["support.prometheus"]`` in a conftest): the ``prometheus_factory`` fixture starts servers
that are stopped at teardown::

    def test_x(prometheus_factory, tmp_path):
        prom = prometheus_factory(["127.0.0.1:9400"])            # 1 s scrape interval
        ...
        prom.stop(); prom.start()                                # same data dir: restart

Tests FAIL (never skip) when no ``prometheus`` binary is found (``$PROMETHEUS_BIN`` overrides).
Every server has its own temp config, data dir and a free port; the scrape job keeps the
targets' labels (``honor_labels: true``) as kubemeter's exporter scrape job must.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PrometheusServer", "find_prometheus", "free_port", "prometheus_factory"]


def find_prometheus() -> str | None:
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One Prometheus process scraping ``targets`` (``host:port``) every ``scrape_interval``.

    ``retention`` is ``--storage.tsdb.retention.time`` (a flag Prometheus refuses twice, so
    not settable through ``extra_args``); backfilled history needs a long one.

    ``scrape_configs``: the whole ``scrape_configs`` list (several jobs, each with its own
    ``honor_labels``) instead of the one ``job`` over ``targets``; ``targets`` then names
    the ``instance`` values :meth:`wait_for_targets` waits for.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        scrape_interval: str = "1s",
        job: str = "kubemeter-exporter",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        retention: str = "2d",
        scrape_configs: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        found = binary or find_prometheus()
        if not found:
            raise FileNotFoundError("prometheus binary not found (apt-get install prometheus)")
        self.binary = found
        self._own_dir = data_dir is None
        self.root = (
            Path(tempfile.mkdtemp(prefix="kubemeter-prom-")) if data_dir is None else data_dir
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.config_path = self.root / "prometheus.yml"
        self.log_path = self.root / "prometheus.log"
        self.port = port or free_port()
        self.scrape_interval = scrape_interval
        self.job = job
        self.extra_args = list(extra_args)
        self.retention = retention
        self.targets = list(targets)
        self.scrape_configs = [dict(c) for c in scrape_configs] if scrape_configs else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------- lifecycle

    def _write_config(self) -> None:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": "900ms"
                       if self.scrape_interval == "1s" else self.scrape_interval},
            "scrape_configs": self.scrape_configs or [
                {
                    "job_name": self.job,
                    "honor_labels": True,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }  # fmt: skip
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                f"--storage.tsdb.retention.time={self.retention}",
                "--log.level=warn",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM): the data dir can be reused by :meth:`start`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (the WAL is replayed on the next start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_targets(self, targets: Sequence[str]) -> None:
        """Rewrite the scrape targets and reload the configuration."""
        self.targets = list(targets)
        self._write_config()
        if self.proc is not None and self.proc.poll() is None:
            self._request("/-/reload", method="POST")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------- API

    def _request(self, path: str, *, method: str = "GET", timeout: float = 10.0) -> bytes:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body

    def ready(self) -> bool:
        try:
            self._request("/-/ready", timeout=1.0)
        except (urllib.error.URLError, OSError):
            return False
        return True

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result list of the API response."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._request("/api/v1/query?" + urllib.parse.urlencode(params))
        data = json.loads(body)
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        data = json.loads(self._request("/api/v1/targets"))
        return {t["labels"]["instance"]: t["health"] == "up" for t in data["data"]["activeTargets"]}

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(result)`` holds."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                last = self.query(promql)
            except (urllib.error.URLError, OSError):
                last = []
            if predicate(last):
                return last
            time.sleep(0.2)
        raise TimeoutError(f"{promql!r} did not satisfy the predicate in {timeout}s: {last}")

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                up = self.targets_up()
            except (urllib.error.URLError, OSError):
                up = {}
            if up and all(up.get(t) for t in self.targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets not up after {timeout}s: {self.targets}")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real Prometheus servers (``factory(targets, **kwargs)``); stopped at teardown."""
    if not find_prometheus():
        pytest.fail(
            "prometheus binary not found: run `make system-deps` (apt-get install prometheus)",
            pytrace=False,
        )
    servers: list[PrometheusServer] = []

    def factory(targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
        kwargs.setdefault("data_dir", tmp_path / f"prometheus-{len(servers)}")
        server = PrometheusServer(targets, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()
