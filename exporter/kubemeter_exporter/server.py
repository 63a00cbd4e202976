"""HTTP ``/metrics`` (prometheus_client) and ``/healthz`` for the exporter.

Scrapes read the collector's state under its lock; they never trigger NVML calls, so
sampling stays independent of the scrape frequency.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kubemeter_exporter import __version__
from kubemeter_exporter import contract as c
from kubemeter_exporter.collector import Collector


def _gauge(spec: c.MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _counter(spec: c.MetricSpec) -> CounterMetricFamily:
    return CounterMetricFamily(spec.family, spec.help, labels=list(spec.labels))


class ExporterMetrics:
    """A prometheus_client custom collector over a :class:`Collector`'s state."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        col = self.collector
        node = col.node
        alloc = _counter(c.GPU_ALLOCATED_MS)
        active = _counter(c.GPU_ACTIVE_MS)
        mem = _gauge(c.GPU_MEMORY_USED)
        info = _gauge(c.GPU_INFO)
        util = _gauge(c.GPU_UTILIZATION)
        dmem = _gauge(c.GPU_DEVICE_MEMORY_USED)
        dtot = _gauge(c.GPU_DEVICE_MEMORY_TOTAL)
        unattr = _gauge(c.EXPORTER_UNATTRIBUTED_PROCESSES)
        gaps = _counter(c.EXPORTER_GAPS)
        gap_ms = _counter(c.EXPORTER_GAP_MS)
        psm = _gauge(c.PROCESS_SM_UTIL)
        pmem = _gauge(c.PROCESS_MEMORY_USED)
        with col.lock:
            for s in col.series.values():
                alloc.add_metric(s.labels, s.allocated_ms)
                active.add_metric(s.labels, s.active_ms)
                if s.present:
                    mem.add_metric(s.labels[:-1], s.memory_bytes)
            topo = col.topology
            if topo is not None:
                for g in topo.gpus:
                    if g.mig_enabled:
                        info.add_metric([node, g.uuid, str(g.index), g.model, "", "", "none"], 1)
                for uuid, dev in topo.devices.items():
                    st = col.device_state.get(uuid)
                    source = st.util_source if st else c.UTIL_SOURCE_PROCESS
                    info.add_metric(
                        [
                            node,
                            uuid,
                            dev.index,
                            dev.model,
                            dev.mig_profile,
                            dev.parent_uuid,
                            source,
                        ],
                        1,
                    )
                    dtot.add_metric([node, uuid], dev.memory_total)
            for uuid, st in col.device_state.items():
                if st.utilization is not None:
                    util.add_metric([node, uuid], st.utilization)
                dmem.add_metric([node, uuid], st.memory_used)
                unattr.add_metric([node, uuid], st.unattributed)
                gaps.add_metric([node, uuid], st.gap_count)
                gap_ms.add_metric([node, uuid], st.gap_ms)
            for r in col.processes:
                lbl = [node, r.uuid, str(r.pid), r.key[0], r.key[1], r.key[2]]
                psm.add_metric(lbl, r.sm_util)
                pmem.add_metric(lbl, r.memory)
            h = col.health
            nvml_errors = dict(h.nvml_errors)
            source_errors = dict(h.source_errors)
            last_sample = h.last_sample_wall
            samples = h.samples
            nvml_up = h.nvml_up
            duration = h.collection_seconds
        yield from (alloc, active, mem, info, util, dmem, dtot, psm, pmem)

        einfo = _gauge(c.EXPORTER_INFO)
        einfo.add_metric([node, col.instance, col.backend.name, __version__], 1)
        start = _gauge(c.EXPORTER_START_TIME)
        start.add_metric([node, col.instance], col.start_time)
        last = _gauge(c.EXPORTER_LAST_SAMPLE)
        last.add_metric([node], last_sample)
        smp = _counter(c.EXPORTER_SAMPLES)
        smp.add_metric([node, col.instance], samples)
        up = _gauge(c.EXPORTER_NVML_UP)
        up.add_metric([node], 1 if nvml_up else 0)
        nerr = _counter(c.EXPORTER_NVML_ERRORS)
        for reason, n in sorted(nvml_errors.items()):
            nerr.add_metric([node, reason], n)
        serr = _counter(c.EXPORTER_SOURCE_ERRORS)
        for source, n in sorted(source_errors.items()):
            serr.add_metric([node, source], n)
        dur = _gauge(c.EXPORTER_COLLECTION_SECONDS)
        dur.add_metric([node], duration)
        yield from (einfo, start, last, smp, up, nerr, serr, dur, unattr, gaps, gap_ms)


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterMetrics(collector))
    return registry


class ExporterServer:
    """``/metrics`` and ``/healthz`` on a threading HTTP server."""

    def __init__(
        self, collector: Collector, host: str, port: int, *, stale_after_s: float | None = None
    ) -> None:
        self.collector = collector
        self.registry = make_registry(collector)
        self.stale_after_s = stale_after_s or max(3 * collector.interval_s, 15.0)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    ok, text = server.health()
                    self._send(200 if ok else 503, text.encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def health(self) -> tuple[bool, str]:
        """Alive while the sampling loop runs; NVML trouble is reported, not fatal."""
        h = self.collector.health
        age = self.collector.clock.time() - h.last_loop_wall if h.last_loop_wall else None
        nvml = "nvml ok" if h.nvml_up else f"nvml down ({h.last_error or 'not initialised'})"
        if age is None:
            return True, f"starting; {nvml}\n"
        if age > self.stale_after_s:
            return False, f"sampling loop stalled for {age:.0f}s; {nvml}\n"
        return True, f"ok; last loop {age:.1f}s ago; {nvml}\n"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
