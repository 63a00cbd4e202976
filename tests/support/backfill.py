"""A real Prometheus serving backfilled history: the samples of a ``support.timeaxis``
:class:`~support.timeaxis.SeriesStore`, written as OpenMetrics, turned into TSDB blocks by
``promtool tsdb create-blocks-from openmetrics`` and served by the Debian ``prometheus``
binary with no scrape targets and a 10-year retention::

    with backfilled_prometheus(store, tmp_path / "prom") as prom:   # started, history loaded
        PrometheusClient(prom.url).query(last_value_query(metric, 15_000), at)

It is the reference the time-axis fake is checked against (its answers must be identical), and
a way to run a metering scenario dated weeks in the past against a real server.

* Counters (names ending in ``_total``) are written as OpenMetrics counter families: ``# TYPE
  <name without _total> counter`` with ``<name>_total`` samples. Other names are written
  without a ``# TYPE`` line (type unknown). Names with ``:`` (vLLM's) are valid OpenMetrics.
* Timestamps are seconds with millisecond precision. promtool truncates ``seconds x 1000``
  to an integer, and for about 1 timestamp in 200 (none in 2026, many in later years) the
  3-decimal text lands a millisecond early; :func:`om_timestamp` writes the shortest decimal
  for which the arithmetic is exact, so every sample lands on its own millisecond.
* Empty label values never reach the file (the store drops them, as a scrape does).
* promtool makes 2 h blocks aligned to the epoch and re-reads its whole input for each one, so
  the samples are split into one file per aligned 2 h span and promtool runs once per file
  (in parallel): a month of history costs ~360 short runs, not 360 reads of a huge file.
  Prometheus opens every block before it reports ready, so history is queryable as soon as
  :meth:`PrometheusServer.start` returns (:func:`backfilled_prometheus` also checks that
  every series is there).

Limits: this is history only. The server scrapes nothing (its configured job has no
targets), and samples appended to the store after the backfill are not seen. Tests FAIL (never
skip) when promtool (``$PROMTOOL_BIN`` overrides) or prometheus is missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from support.prometheus import PrometheusServer, find_prometheus
from support.timeaxis import SeriesStore

__all__ = [
    "BLOCK_MS",
    "backfill_factory",
    "backfilled_prometheus",
    "create_blocks",
    "find_promtool",
    "om_timestamp",
    "openmetrics_lines",
    "prometheus_version",
    "range_is_left_open",
    "require_promtool",
    "write_openmetrics",
]

BLOCK_MS = 2 * 3600 * 1000
"""promtool's block length (its default, aligned to the epoch)."""


def find_promtool() -> str | None:
    return os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")


def require_promtool() -> str:
    """The promtool binary; fails the calling test (never skips) when there is none."""
    found = find_promtool()
    if not found:
        pytest.fail(
            "promtool binary not found: run `make system-deps` (apt-get install prometheus)",
            pytrace=False,
        )
    return found


# ---------------------------------------------------------------- OpenMetrics text


def om_timestamp(t_ms: int) -> str:
    """``t_ms`` as OpenMetrics seconds that promtool reads back as exactly ``t_ms``."""
    if t_ms < 0:
        raise ValueError("timestamps before the epoch are not supported")
    text = f"{t_ms // 1000}.{t_ms % 1000:03d}"
    x = float(text)
    if x * 1000 == float(t_ms):  # Go computes int64(x * 1000), the same IEEE product
        return text
    x = t_ms / 1000
    while x * 1000 < t_ms:
        x = math.nextafter(x, math.inf)
    if math.floor(x * 1000) != t_ms:
        raise ValueError(f"no float64 of seconds truncates to {t_ms} ms")
    return repr(x)


def _om_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)


def _om_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics_lines(
    store: SeriesStore, start_ms: int | None = None, end_ms: int | None = None
) -> Iterator[str]:
    """The store's samples with ``start_ms <= t < end_ms`` as OpenMetrics lines (``# EOF``
    last), one family per metric, each series' samples together and in time order."""
    for metric in store.metrics():
        family_lines: list[str] = []
        for s in store.series(metric):
            lo = 0 if start_ms is None else s.last_index(start_ms - 1) + 1
            hi = len(s) if end_ms is None else s.last_index(end_ms - 1) + 1
            if lo >= hi:
                continue
            pairs = ",".join(f'{k}="{_om_escape(v)}"' for k, v in s.key.labels)
            head = f"{metric}{{{pairs}}}" if pairs else metric
            for i in range(lo, hi):
                family_lines.append(f"{head} {_om_value(s.values[i])} {om_timestamp(s.times[i])}")
        if not family_lines:
            continue
        if metric.endswith("_total"):
            yield f"# TYPE {metric[: -len('_total')]} counter"
        yield from family_lines
    yield "# EOF"


def write_openmetrics(
    store: SeriesStore, path: Path, start_ms: int | None = None, end_ms: int | None = None
) -> int:
    """Write :func:`openmetrics_lines` to ``path``; returns the number of samples."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in openmetrics_lines(store, start_ms, end_ms):
            if not line.startswith("#"):
                n += 1
            f.write(line)
            f.write("\n")
    return n


# ---------------------------------------------------------------- blocks


def create_blocks(
    store: SeriesStore,
    data_dir: Path,
    *,
    work_dir: Path | None = None,
    promtool: str | None = None,
) -> int:
    """Backfill every sample of ``store`` into TSDB blocks under ``data_dir`` (one file and
    one promtool run per aligned 2 h span); returns the number of samples written."""
    binary = promtool or require_promtool()
    span = store.time_range()
    if span is None:
        return 0
    data_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir or data_dir.parent / "openmetrics"
    work.mkdir(parents=True, exist_ok=True)
    jobs: list[Path] = []
    total = 0
    for bucket in range(span[0] // BLOCK_MS, span[1] // BLOCK_MS + 1):
        path = work / f"block-{bucket * BLOCK_MS}.om"
        n = write_openmetrics(store, path, bucket * BLOCK_MS, (bucket + 1) * BLOCK_MS)
        if n:
            jobs.append(path)
            total += n

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                binary,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--quiet",
                str(path),
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for path, done in zip(jobs, pool.map(run, jobs), strict=True):
            if done.returncode != 0:
                raise RuntimeError(
                    f"promtool failed on {path} (rc {done.returncode}): "
                    f"{(done.stderr or done.stdout)[-2000:]}"
                )
    return total


# ---------------------------------------------------------------- the server


def _get_json(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    query = "?" + urllib.parse.urlencode(params) if params else ""
    with urllib.request.urlopen(url + path + query, timeout=30) as resp:
        return json.loads(resp.read())


def prometheus_version(url: str) -> tuple[int, ...]:
    """The server's version numbers (``2.42.0+ds`` -> ``(2, 42, 0)``)."""
    raw = str(_get_json(url, "/api/v1/status/buildinfo")["data"]["version"])
    core = raw.split("+")[0].split("-")[0]
    return tuple(int(p) for p in core.split(".") if p.isdigit())


def range_is_left_open(url: str) -> bool:
    """Whether the server's range selectors exclude their left end (Prometheus >= 3)."""
    return prometheus_version(url)[0] >= 3


def backfilled_prometheus(
    store: SeriesStore, root: Path, *, retention: str = "10y", **server_kwargs: Any
) -> PrometheusServer:
    """Backfill ``store`` under ``root`` and start a Prometheus on it (no scrape targets).

    The caller stops it (``close()``, or use it as a context manager). Raises RuntimeError
    when a series of the store is missing from the server once it is ready.
    """
    if not find_prometheus():
        pytest.fail(
            "prometheus binary not found: run `make system-deps` (apt-get install prometheus)",
            pytrace=False,
        )
    server = PrometheusServer([], data_dir=root, retention=retention, **server_kwargs)
    create_blocks(store, server.data_dir, work_dir=root / "openmetrics")
    server.start()
    try:
        span = store.time_range()
        if span is not None:
            loaded = _get_json(
                server.url,
                "/api/v1/series",
                {
                    "match[]": '{__name__=~".+"}',
                    "start": om_timestamp(span[0]),
                    "end": om_timestamp(span[1]),
                },
            )["data"]
            expected = len(store.series())
            if len(loaded) != expected:
                raise RuntimeError(
                    f"backfilled prometheus serves {len(loaded)} series, the store has "
                    f"{expected}: {server.log_tail()}"
                )
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture
def backfill_factory(tmp_path: Path) -> Iterator[Callable[[SeriesStore], PrometheusServer]]:
    """``factory(store)``: a started Prometheus serving ``store``'s samples; stopped at
    teardown. Register with ``pytest_plugins = ["support.backfill"]``."""
    require_promtool()
    servers: list[PrometheusServer] = []

    def factory(store: SeriesStore) -> PrometheusServer:
        server = backfilled_prometheus(store, tmp_path / f"backfill-{len(servers)}")
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()
