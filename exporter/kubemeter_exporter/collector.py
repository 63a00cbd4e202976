"""The sampling loop: NVML + pod-resources + /proc -> per-(device, pod) counters.

Accounting rules (see also ``contract.py``):

* Time: each device keeps the monotonic time of its last successful sample. At a new
  sample, the elapsed time (nanoseconds carried so integer milliseconds never drift) is
  the interval ``(t_prev, t_now]``. It is billed to the pods holding the device at
  ``t_now`` (right-point rule: with regular sampling, the error at a pod's start and at its
  end cancel). The first sample of a device bills nothing.
* Pauses: an interval longer than ``max_billable_ms`` (default ``default_cap_s``:
  max(2x the sampling interval, the interval + 1 s), so scheduling jitter is no gap) is
  billed only up to that cap; the excess goes to the gap counters. A device whose queries
  fail is not billed for the failed rounds (its next interval is capped the same way).
* Active: ``active += allocated_interval_ms * share``; ``share`` per pod and device from
  per-process SM samples (mean per PID over the samples newer than the device's last-seen
  timestamp, summed over the pod's PIDs, capped at 100 %), or from device utilisation split
  by process count when per-process utilisation is NOT_SUPPORTED, or presence (1 when the
  pod has a process on the device) when the device reports no utilisation (MIG). The
  fraction is carried per series in integer units of ``1/SHARE_DEN`` ms.

Attribution (no Kubernetes API; see ``binding.py``):

* The pods holding a device come from pod-resources: series
  ``(namespace, pod, pod_uid)`` with ``pod_uid`` once the pod's processes have been bound to
  it (``""`` before), billed allocated time whether or not they run anything.
* A GPU process's pod UID comes from its cgroup. A bound UID is billed on its pod's series;
  a free UID (no pod holding a device can be it) on ``("", "", uid)``; a process of no pod
  on ``("", "", "")``. An ambiguous UID (it may be one of the pods billed by name) is billed
  nowhere and counted, like processes of no pod, as unattributed.
* Each round first queries NVML for every device, then binds with what all devices showed,
  then counts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubemeter_exporter import contract as c
from kubemeter_exporter.binding import Devices, PodBinder, PodRef
from kubemeter_exporter.cgroups import ProcCgroupReader
from kubemeter_exporter.clock import Clock, SystemClock
from kubemeter_exporter.devices import Device, Topology
from kubemeter_exporter.nvml.base import (
    DeviceSample,
    NvmlBackend,
    NvmlError,
    NvmlGpuLostError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlUnavailableError,
    ProcessInfo,
    ProcessUtilSample,
)
from kubemeter_exporter.podresources.client import ContainerAllocation, PodResourcesLister

log = logging.getLogger(__name__)

SCALE = 720720  # lcm(1..16): means over up to 16 samples per PID stay exact
SHARE_DEN = 100 * SCALE  # a share of 1 (100 %)
NS_PER_MS = 1_000_000

PodKey = tuple[str, str, str]  # namespace, pod, pod_uid
UNATTRIBUTED: PodKey = ("", "", "")


def default_cap_s(interval_s: float) -> float:
    """The longest interval billed at once by default: max(2x interval, interval + 1 s)."""
    return max(2 * interval_s, interval_s + 1.0)


@dataclass(slots=True)
class Series:
    labels: tuple[str, ...]  # contract.COUNTER_LABELS values
    allocated_ms: int = 0
    active_ms: int = 0
    active_rem: int = 0  # units of 1/SHARE_DEN ms
    memory_bytes: int = 0
    last_touch_ns: int = 0
    present: bool = False


@dataclass(slots=True)
class DeviceState:
    last_sample_ns: int | None = None
    rem_ns: int = 0
    last_seen_us: int = 0
    util_source: str = c.UTIL_SOURCE_PROCESS
    proc_util_supported: bool = True
    utilization: int | None = None
    memory_used: int = 0
    unattributed: int = 0
    unbillable: int = 0  # processes of pods that could not be told apart (last sample)
    gap_count: int = 0
    gap_ms: int = 0


@dataclass(frozen=True, slots=True)
class ProcessRow:
    uuid: str
    pid: int
    key: PodKey
    sm_util: float
    memory: int


@dataclass(slots=True)
class Health:
    nvml_up: bool = False
    last_sample_wall: float = 0.0
    last_loop_wall: float = 0.0
    samples: int = 0
    nvml_errors: dict[str, int] = field(default_factory=dict)
    source_errors: dict[str, int] = field(default_factory=dict)
    collection_seconds: float = 0.0
    last_error: str = ""


@dataclass(slots=True)
class DeviceRound:
    """What NVML said about one device in this round, before attribution."""

    uuid: str
    dev: Device
    st: DeviceState
    dt_ms: int
    ds: DeviceSample
    procs: list[ProcessInfo]
    uids: list[str]  # pod UID of each of ``procs`` ("" = no pod), filled after the queries
    util_sum: dict[int, int]
    util_n: dict[int, int]


class Collector:
    """Samples NVML and attributes usage to pods. ``sample()`` never raises.

    ``pods`` is ignored: attribution reads no pod metadata (pod-resources and cgroups name
    the pods). The parameter stays so callers written for the API-backed exporter keep
    working; pass None.
    """

    def __init__(
        self,
        backend: NvmlBackend,
        pod_resources: PodResourcesLister | None,
        pods: object | None,
        cgroups: ProcCgroupReader,
        *,
        node: str,
        interval_s: float = 5.0,
        clock: Clock | None = None,
        max_billable_ms: int | None = None,
        instance: str | None = None,
        series_retention_s: float = 3600.0,
        rediscover_s: float = 60.0,
        process_metrics: bool = True,
    ) -> None:
        self.backend = backend
        self.pod_resources = pod_resources
        self.cgroups = cgroups
        self.node = node
        self.interval_s = interval_s
        self.clock: Clock = clock or SystemClock()
        self.max_billable_ms = (
            max_billable_ms
            if max_billable_ms is not None
            else round(1000 * default_cap_s(interval_s))
        )
        self.instance = instance or secrets.token_hex(6)
        self.series_retention_ns = int(series_retention_s * 1e9)
        self.rediscover_ns = int(rediscover_s * 1e9)
        self.process_metrics = process_metrics
        self.start_time = self.clock.time()

        self.lock = threading.Lock()
        self.series: dict[tuple[str, str, str, str], Series] = {}
        self.device_state: dict[str, DeviceState] = {}
        self.processes: list[ProcessRow] = []
        self.health = Health()
        self.topology: Topology | None = None
        self.binder = PodBinder()
        self._topology_ns: int = 0
        self._topology_stale = True
        self._allocations: list[ContainerAllocation] = []
        self._allocations_ns: int | None = None
        self._holdings_for: tuple[Topology, list[ContainerAllocation]] | None = None
        self._holdings_cache: tuple[dict[PodRef, Devices], dict[str, list[PodRef]]] = ({}, {})
        self._last_log: dict[str, float] = {}
        self._no_proc_util_logged: set[str] = set()
        self._missing_gpus: set[str] = set()

    # ---------------------------------------------------------------- errors & logs
    def _log_rate_limited(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= 60.0:
            self._last_log[key] = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)

    def _nvml_error(self, err: NvmlError, where: str) -> None:
        h = self.health
        h.nvml_errors[err.reason] = h.nvml_errors.get(err.reason, 0) + 1
        h.last_error = f"{where}: {err}"
        self._log_rate_limited(
            f"nvml:{err.reason}:{where}", "NVML error (%s) at %s: %s", err.reason, where, err
        )

    def _source_error(self, source: str, err: BaseException) -> None:
        h = self.health
        h.source_errors[source] = h.source_errors.get(source, 0) + 1
        self._log_rate_limited(f"src:{source}", "%s error: %s", source, err)

    # ---------------------------------------------------------------- NVML lifecycle
    def _ensure_nvml(self, now_ns: int) -> bool:
        if not self.health.nvml_up:
            with contextlib.suppress(NvmlError):
                self.backend.shutdown()
            try:
                self.backend.init()
            except NvmlError as err:
                self._nvml_error(
                    err
                    if isinstance(err, NvmlUnavailableError)
                    else NvmlUnavailableError(str(err), reason="init"),
                    "init",
                )
                return False
            self.health.nvml_up = True
            self._topology_stale = True
            log.info("NVML initialised (%s backend)", self.backend.name)
        if self._topology_stale or now_ns - self._topology_ns >= self.rediscover_ns:
            try:
                gpus = self.backend.list_gpus()
            except NvmlUnavailableError as err:
                self._nvml_error(err, "enumerate")
                self.health.nvml_up = False
                return False
            except NvmlError as err:
                self._nvml_error(err, "enumerate")
                return self.topology is not None
            known = set(self.topology.physical) if self.topology else set()
            self.topology = Topology(gpus)
            self._topology_ns = now_ns
            # While a GPU we knew is missing (fell off the bus), enumerate every round.
            missing = known - set(self.topology.physical)
            self._missing_gpus |= missing
            self._missing_gpus -= set(self.topology.physical)
            self._topology_stale = bool(self._missing_gpus)
            for uuid in self.topology.devices:
                st = self.device_state.setdefault(uuid, DeviceState())
                st.proc_util_supported = True  # re-probe after every enumeration
        return True

    # ---------------------------------------------------------------- attribution
    def _read_allocations(self, now_ns: int) -> list[ContainerAllocation] | None:
        """The kubelet's allocations; None when they are not known (no lister, or the
        kubelet has not answered for longer than the billable cap)."""
        if self.pod_resources is None:
            return None
        try:
            allocs = self.pod_resources.list()
        except Exception as err:
            self._source_error("pod_resources", err)
            # Keep the last answer for a short while (kubelet restart), then forget it.
            if (
                self._allocations_ns is not None
                and now_ns - self._allocations_ns <= self.max_billable_ms * NS_PER_MS
            ):
                return self._allocations
            return None
        self._allocations = allocs
        self._allocations_ns = now_ns
        return allocs

    def _cached_holdings(
        self, topo: Topology, allocs: list[ContainerAllocation] | None
    ) -> tuple[dict[PodRef, Devices] | None, dict[str, list[PodRef]]]:
        if allocs is None:
            return None, {}
        last = self._holdings_for
        if last is None or last[0] is not topo or last[1] != allocs:
            holdings, holders = self._holdings(topo, allocs)
            assert holdings is not None
            self._holdings_for = (topo, allocs)
            self._holdings_cache = (holdings, holders)
        return self._holdings_cache

    @staticmethod
    def _holdings(
        topo: Topology, allocs: Iterable[ContainerAllocation] | None
    ) -> tuple[dict[PodRef, Devices] | None, dict[str, list[PodRef]]]:
        """Devices per listed pod (None: unknown) and the pods holding each device.

        A pod whose devices are no GPU of ours, or a GPU missing from the topology right
        now (fallen off the bus), is listed with no devices: it holds nothing we bill, and
        the binder keeps what it knows about it."""
        if allocs is None:
            return None, {}
        held: dict[PodRef, set[str]] = {}
        for a in allocs:
            devs = held.setdefault((a.namespace, a.pod), set())
            for did in a.device_ids:
                uuid = topo.resolve(did)
                if uuid is not None:
                    devs.add(uuid)
        holdings: dict[PodRef, Devices] = {}
        by_device: dict[str, list[PodRef]] = {}
        for pod, devs in held.items():
            holdings[pod] = frozenset(devs)
            for uuid in devs:
                by_device.setdefault(uuid, []).append(pod)
        return holdings, by_device

    def _uid(self, pid: int) -> str:
        ident = self.cgroups.lookup(pid)
        return ident.pod_uid if ident is not None else ""

    def _uid_key(self, uid: str) -> PodKey | None:
        """The series of a process of pod ``uid``; None when it may not be billed."""
        if not uid:
            return UNATTRIBUTED
        pod = self.binder.pod_of(uid)
        if pod is not None:
            return (pod[0], pod[1], uid)
        if uid in self.binder.ambiguous:
            return None
        return ("", "", uid)

    # ---------------------------------------------------------------- one round
    def sample(self) -> None:
        t0 = time.perf_counter()
        try:
            self._sample()
        except Exception as err:  # never crash the loop
            self._source_error("internal", err)
            log.exception("sampling round failed")
        self.health.last_loop_wall = self.clock.time()
        self.health.collection_seconds = time.perf_counter() - t0

    def _sample(self) -> None:
        now_ns = self.clock.monotonic_ns()
        if not self._ensure_nvml(now_ns):
            with self.lock:
                self._mark_absent(now_ns)
            return
        topo = self.topology
        assert topo is not None
        holdings, holders = self._cached_holdings(topo, self._read_allocations(now_ns))
        rounds: list[DeviceRound] = []
        with self.lock:
            self._mark_absent(now_ns)
            for uuid, dev in topo.devices.items():
                st = self.device_state.setdefault(uuid, DeviceState())
                try:
                    rounds.append(self._query_device(uuid, dev, st, now_ns))
                except NvmlUnavailableError as err:
                    self._nvml_error(err, uuid)
                    self.health.nvml_up = False
                    break
                except NvmlGpuLostError as err:
                    self._nvml_error(err, uuid)
                    self._topology_stale = True
                    continue
                except NvmlError as err:
                    self._nvml_error(err, uuid)
                    continue
            # Who runs where, on every device that answered, then one binding for all.
            seen: dict[str, set[str]] = {}
            for r in rounds:
                r.uids = [self._uid(p.pid) for p in r.procs]
                for uid in r.uids:
                    if uid:
                        seen.setdefault(uid, set()).add(r.uuid)
            self.binder.update(holdings, seen)
            processes: list[ProcessRow] = []
            live_pids: set[int] = set()
            for r in rounds:
                processes.extend(self._account(r, holders.get(r.uuid, ()), now_ns))
                live_pids.update(p.pid for p in r.procs)
            self.processes = processes if self.process_metrics else []
            self._expire(now_ns)
            self.health.samples += 1
            if rounds or not topo.devices:
                self.health.last_sample_wall = self.clock.time()
        self.cgroups.retain(live_pids)

    def _mark_absent(self, now_ns: int) -> None:
        for s in self.series.values():
            s.present = False
            s.memory_bytes = 0

    def _expire(self, now_ns: int) -> None:
        dead = [
            k
            for k, s in self.series.items()
            if not s.present and now_ns - s.last_touch_ns > self.series_retention_ns
        ]
        for k in dead:
            del self.series[k]

    def _query_device(self, uuid: str, dev: Device, st: DeviceState, now_ns: int) -> DeviceRound:
        """NVML's answers for one device, and the time since its last good sample."""
        b = self.backend
        ds = b.device_sample(uuid)
        procs: list[ProcessInfo] = b.compute_processes(uuid)
        samples: list[ProcessUtilSample] = []
        if st.proc_util_supported:
            try:
                samples = b.process_utilization(uuid, st.last_seen_us)
            except NvmlNotFoundError:
                samples = []
            except NvmlNotSupportedError:
                st.proc_util_supported = False
                lvl = logging.DEBUG if uuid in self._no_proc_util_logged else logging.INFO
                self._no_proc_util_logged.add(uuid)
                log.log(lvl, "%s: per-process utilisation not supported; falling back", uuid)
        # ---- time
        if st.last_sample_ns is None:
            dt_ms = 0
        else:
            elapsed = now_ns - st.last_sample_ns + st.rem_ns
            dt_ms, st.rem_ns = divmod(elapsed, NS_PER_MS)
            if dt_ms > self.max_billable_ms:
                st.gap_count += 1
                st.gap_ms += dt_ms - self.max_billable_ms
                self._log_rate_limited(
                    f"gap:{uuid}",
                    "%s: %d ms since the last sample; billing %d ms, gap %d ms",
                    uuid,
                    dt_ms,
                    self.max_billable_ms,
                    dt_ms - self.max_billable_ms,
                )
                dt_ms = self.max_billable_ms
                st.rem_ns = 0
        st.last_sample_ns = now_ns
        st.utilization = ds.utilization
        st.memory_used = ds.memory_used

        # ---- per-PID utilisation over the interval (samples newer than last seen)
        last_seen = st.last_seen_us
        util_sum: dict[int, int] = {}
        util_n: dict[int, int] = {}
        max_ts = last_seen
        for s in samples:
            ts = s.timestamp_us
            if ts <= last_seen:
                continue  # already read (defensive: the driver filters too)
            util_sum[s.pid] = util_sum.get(s.pid, 0) + s.sm_util
            util_n[s.pid] = util_n.get(s.pid, 0) + 1
            if ts > max_ts:
                max_ts = ts
        st.last_seen_us = max_ts
        return DeviceRound(uuid, dev, st, dt_ms, ds, procs, [], util_sum, util_n)

    def _account(self, r: DeviceRound, holders: Iterable[PodRef], now_ns: int) -> list[ProcessRow]:
        """Bill one device's interval to the pods on it; returns its process rows."""
        uuid, st, ds, dt_ms = r.uuid, r.st, r.ds, r.dt_ms
        util_sum, util_n = r.util_sum, r.util_n
        binder = self.binder
        # ---- processes -> pods
        pod_procs: dict[PodKey, list[ProcessInfo]] = {}
        unbillable: list[tuple[ProcessInfo, str]] = []  # ambiguous UIDs' processes
        unattributed = 0
        for p, uid in zip(r.procs, r.uids, strict=True):
            key = self._uid_key(uid)
            if key is None:
                unattributed += 1
                unbillable.append((p, uid))
                continue
            if key == UNATTRIBUTED:
                unattributed += 1
            pod_procs.setdefault(key, []).append(p)
        keys = {(ns, name, binder.uid_of((ns, name))) for ns, name in holders}
        keys |= pod_procs.keys()
        # Samples of PIDs that exited before this sample still count for their pod, if the
        # pod is on the device now (they never make a pod appear by themselves).
        listed = {p.pid for p in r.procs}
        for pid in util_sum:
            if pid not in listed:
                key = self._uid_key(self._uid(pid))
                if key in keys:
                    pod_procs.setdefault(key, []).append(ProcessInfo(pid=pid, memory_used=0))
        st.unattributed = unattributed
        if len(unbillable) != st.unbillable:
            st.unbillable = len(unbillable)
            log.info(
                "%s: %d processes of pods sharing the device could not be told apart from "
                "the pods holding it; their activity is not billed until they can",
                uuid,
                st.unbillable,
            )

        # ---- share per pod (units of 1/SHARE_DEN)
        if st.proc_util_supported:
            st.util_source = c.UTIL_SOURCE_PROCESS
        elif ds.utilization is not None:
            st.util_source = c.UTIL_SOURCE_DEVICE
        else:
            st.util_source = c.UTIL_SOURCE_PRESENCE
        shares: dict[PodKey, int] = {}
        n_total = len(r.procs)  # unbillable processes take their part of the device too
        for key in keys:
            plist = pod_procs.get(key, [])
            if st.util_source == c.UTIL_SOURCE_PROCESS:
                num = 0
                for p in plist:
                    n = util_n.get(p.pid)
                    if n:
                        num += util_sum[p.pid] * SCALE // n
                shares[key] = min(num, SHARE_DEN)
            elif st.util_source == c.UTIL_SOURCE_DEVICE:
                u = ds.utilization or 0
                if n_total:
                    shares[key] = u * SCALE * len(plist) // n_total
                elif len(keys) == 1:
                    shares[key] = u * SCALE
                else:
                    shares[key] = 0
            else:
                shares[key] = SHARE_DEN if plist else 0

        # ---- counters
        rows: list[ProcessRow] = []
        dev = r.dev
        for key in keys:
            skey = (uuid, key[0], key[1], key[2])
            series = self.series.get(skey)
            if series is None:
                series = Series(
                    labels=(
                        self.node,
                        uuid,
                        dev.model,
                        dev.mig_profile,
                        key[0],
                        key[1],
                        key[2],
                        self.instance,
                    )
                )
                self.series[skey] = series
            series.allocated_ms += dt_ms
            rem = series.active_rem + dt_ms * shares[key]
            inc, series.active_rem = divmod(rem, SHARE_DEN)
            series.active_ms += inc
            plist = pod_procs.get(key, [])
            series.memory_bytes = sum(p.memory_used for p in plist)
            series.present = True
            series.last_touch_ns = now_ns
            if self.process_metrics:
                for p in plist:
                    rows.append(
                        ProcessRow(uuid, p.pid, key, _mean(util_sum, util_n, p.pid), p.memory_used)
                    )
        if self.process_metrics:
            for p, uid in unbillable:  # shown (not billed) under their pod UID
                rows.append(
                    ProcessRow(
                        uuid, p.pid, ("", "", uid), _mean(util_sum, util_n, p.pid), p.memory_used
                    )
                )
        return rows


def _mean(util_sum: dict[int, int], util_n: dict[int, int], pid: int) -> float:
    n = util_n.get(pid)
    return util_sum[pid] / n if n else 0.0


class SamplerThread:
    """Runs ``collector.sample()`` every ``interval_s`` of wall time, on a fixed grid."""

    def __init__(self, collector: Collector, interval_s: float) -> None:
        self.collector = collector
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.collector.sample()
            k += 1
            now = time.monotonic()
            nxt = start + k * self.interval_s
            if nxt < now:  # overran: skip missed slots, keep the grid
                k = int((now - start) / self.interval_s) + 1
                nxt = start + k * self.interval_s
            self._stop.wait(nxt - now)
