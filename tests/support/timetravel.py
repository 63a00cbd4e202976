"""The time-travel harness: the whole operator cycle (meter -> bill -> status) through
simulated months, in seconds, against a real SQLite or PostgreSQL ledger.

    tt = TimeTravel(ledger_url, start=datetime(2026, 9, 30, 12, tzinfo=UTC))
    tt.add_tenant("acme", namespaces=["acme"], plan="std", wallet=True)
    tt.add_plan("std", {...PricePlan spec...})
    alloc = tt.gpu("acme", "train-0", start=tt.now)        # a pod holding a GPU
    tt.topup("acme", "100", "t1")
    tt.advance(until=datetime(2026, 11, 2, tzinfo=UTC))     # cycles every `every`
    tt.post("acme", [TokenUsage(...)])                      # events, stamped with tt.now
    tt.restart()                                            # a new operator process
    check_invariants(tt)                                    # the oracle (see below)

What is real: the ledger (a database and its transactions), `MeteringCycle`, `MeteringLoop`,
`Biller`, `TenantReconciler` and `OperatorCycle.run_once` (the operator's own order of a
cycle), and the clock they are given (`now`). What is simulated: Prometheus
(`support.timeaxis.FakePrometheus`, samples at simulated timestamps written by a scraper
of simulated exporters) and the Kubernetes API (`KubeRecorder`: it applies status merge
patches to the Tenants it holds, as the API server would, and keeps the Events).

`Operator` is one replica: its own ledger connection and in-memory state. `restart()`
replaces it (a crash loses only memory); `replica()` adds a second one on the same ledger.

The oracle (`check_invariants`) recomputes every finalised invoice from the simulated
truth, without the operator's code: GPU milliseconds from the stored samples
(`SeriesStore.increase` per series between the period's bounds, attributed by namespace),
tokens from the events posted and when they were posted, rated with `kubemeter quote`'s
functions (`usage.accumulate` + `rating.rate`) at the period's recorded terms.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry

from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant, TenantStatus
from kubemeter_operator.api.usage import GpuUsage, UsageRecord
from kubemeter_operator.billing import statements
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.controller.budgets import BudgetStep
from kubemeter_operator.controller.cycle import CycleOutcome, OperatorCycle
from kubemeter_operator.controller.reconcile import TenantReconciler
from kubemeter_operator.enforcement.enforcer import Enforcer
from kubemeter_operator.kube.gpu import GpuResources
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import MeteringConfig, MeteringCycle
from kubemeter_operator.metering.loop import MeteringLoop
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodMeta, StaticPodDirectory
from kubemeter_operator.metering.windows import align_down
from kubemeter_operator.notifications.delivery import Notifier
from kubemeter_operator.rating import rate
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage import Period, accumulate

from support.timeaxis import (
    ACTIVE,
    ALLOCATED,
    FakePrometheus,
    GpuAllocation,
    GpuExporter,
    Scraper,
    SeriesStore,
)
from support.workloads import FakeWorkloads

H100 = "NVIDIA H100 80GB HBM3"
MS_PER_HOUR = 3_600_000


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


class Crash(Exception):  # noqa: N818 - it is not an error: the process dies here
    """Raised by a test's fault injection: the operator process dies at that line. The
    harness catches it and starts a new operator on the same ledger (`TimeTravel.advance`)."""


class Killed(BaseException):
    """Like `Crash`, but no `except Exception` on the way can catch it: the process is gone
    at that line, whatever handlers the code has (`kill_at`)."""


def kill_at(target: Any, name: str, call: int, *, after: bool = True) -> list[int]:
    """Kill the operator at the `call`-th call of `target.name` (1-based): `after` it ran
    (its effect happened, nothing after it did) or before. Returns the calls counter."""
    original = getattr(target, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] != call:
            return original(*args, **kwargs)
        if after:
            original(*args, **kwargs)
        raise Killed(f"{name} call {call}")

    setattr(target, name, wrapper)
    return calls


def crash_once(target: Any, name: str, *, after: bool = False) -> list[int]:
    """Make `target.name` (a method) kill the operator the first time it is called: before
    it runs, or `after` it ran (so its effect happened but nothing after it did). Returns a
    counter of crashes (a list holding one int)."""
    original = getattr(target, name)
    crashed = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if crashed[0]:
            return original(*args, **kwargs)
        crashed[0] += 1
        if after:
            original(*args, **kwargs)
        raise Crash(f"{getattr(target, '__name__', target)}.{name}")

    setattr(target, name, wrapper)
    return crashed


@dataclass(frozen=True)
class PostedEvent:
    tenant: str
    reason: str
    type: str
    message: str
    at: datetime


class KubeRecorder:
    """The Kubernetes API as the status step sees it: Tenant status (merge patches applied to
    the Tenants of `world`, as a watch would deliver them back) and Events."""

    def __init__(self, world: World, clock: Callable[[], datetime]) -> None:
        self.world = world
        self.clock = clock
        self.events: list[PostedEvent] = []
        self.status: dict[str, dict[str, Any]] = {}

    async def patch_status(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        assert plural == "tenants"
        self.status[name] = apply_merge_patch(self.status.get(name, {}), patch["status"])
        tenant = self.world.tenants.get(name)
        if tenant is not None:
            tenant.status = TenantStatus.model_validate(self.status[name])

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        name = obj["metadata"]["name"]
        self.events.append(PostedEvent(name, reason, type_, message, self.clock()))

    def reasons(self, tenant: str) -> list[str]:
        return [e.reason for e in self.events if e.tenant == tenant]


@dataclass
class World:
    """What the Kubernetes API holds: Tenants, PricePlans, pods."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    plans: dict[str, PricePlan] = field(default_factory=dict)
    pods: StaticPodDirectory = field(default_factory=StaticPodDirectory)


class Operator:
    """One operator replica: its own ledger connection, the real cycle, simulated time."""

    def __init__(self, tt: TimeTravel) -> None:
        self.tt = tt
        self.ledger = Ledger.open(tt.ledger_url, clock=lambda: tt.now)
        world = tt.world
        self.metering = MeteringCycle(
            self.ledger,
            tt.prom,
            world.pods,
            tt.config,
            metrics=MeteringMetrics(CollectorRegistry()),
            clock=lambda: tt.now,
            exporters=tt.exporters,
        )
        self.loop = MeteringLoop(
            self.metering,
            lambda: (list(world.tenants.values()), {n: p.spec for n, p in world.plans.items()}),
        )
        self.biller = Biller(self.ledger, grace=tt.grace)
        self.reconciler = TenantReconciler(self.ledger, tt.kube)
        self.budgets = BudgetStep(
            self.ledger,
            Enforcer(self.ledger, tt.workloads, GpuResources()),
            tt.kube,
            self.reconciler.recent,
        )
        self.notifier = Notifier(self.ledger, tt.kube, lambda _ns, _name: None)
        self.cycle = OperatorCycle(
            self.loop,
            self.biller,
            self.reconciler,
            lambda: (dict(world.tenants), dict(world.plans)),
            clock=lambda: tt.now,
            budgets=self.budgets,
            notifier=self.notifier,
        )

    def run_once(self, now: datetime) -> CycleOutcome:
        """One cycle, then more while metering is behind (as `OperatorCycle.run` does)."""
        for _ in range(10_000):
            outcome = asyncio.run(self.cycle.run_once(now))
            if outcome.billing is not None or outcome.wait_s > 0:
                return outcome
        raise AssertionError("metering never caught up")

    def close(self) -> None:
        self.ledger.close()


class TimeTravel:
    def __init__(
        self,
        ledger_url: str,
        *,
        start: datetime,
        scrape_interval: timedelta = timedelta(minutes=1),
        config: MeteringConfig | None = None,
        grace: timedelta = timedelta(hours=1),
        prometheus: Any = None,
        exporters: Any = None,
        fresh_ledger: bool = False,
    ) -> None:
        """`prometheus`: what the operator queries (default: the fake over `store`; a real
        `PrometheusClient` for history backfilled from `store` beforehand, in which case
        `advance` no longer scrapes). `exporters`: the operator's exporter directory
        (`metering.exporters.ExporterDirectory`; default None: no node check).

        The ledger's metering starts at `start`: the harness writes the metering checkpoint an
        operator that had metered (no series yet) until one step before `start` would have
        left, so the series the scenario creates are counted from 0 whenever its first cycle
        runs. `fresh_ledger=True` leaves the ledger without one: the first window is then the
        metering start, and what the counters hold at its end is the baseline (not billed)."""
        self.ledger_url = ledger_url
        self.start = start
        self.now = start
        self.grace = grace
        self.exporters = exporters
        self.config = config or MeteringConfig(
            step=timedelta(minutes=5),
            lag=timedelta(minutes=2),
            max_window=timedelta(hours=1),
            scrape_margin=timedelta(minutes=3),
            prune_after=timedelta(hours=2),
        )
        self.world = World()
        self.store = SeriesStore()
        self.scraper = Scraper(self.store, start=start, interval=scrape_interval)
        self.node = GpuExporter("node-1", started=start - timedelta(days=1), instance="exp-1")
        self.scraper.add(self.node, labels={"job": "kubemeter-exporter"})
        self.fake = FakePrometheus(self.store)
        self.prom: Any = prometheus if prometheus is not None else self.fake
        self.scraping = prometheus is None
        self.kube = KubeRecorder(self.world, lambda: self.now)
        # pods start and stop just after the instant the scraper has reached
        soon = timedelta(milliseconds=1)
        self.workloads = FakeWorkloads(
            lambda ns, pod: self.gpu(ns, pod, start=self.now + soon),
            lambda alloc: self.node.release(alloc, self.now + soon),
            lambda: self.now,
        )
        """GPU workloads the tenants run (`support.workloads`): enforcement scales them."""
        self.posted: list[tuple[datetime, str, UsageRecord]] = []
        """(posted at, tenant, record) of every event the ledger accepted."""
        self.topups: dict[str, Decimal] = {}
        self.operators = [Operator(self)]
        if not fresh_ledger and self.ledger.get_checkpoint(self.config.checkpoint_name) is None:
            since = align_down(start, self.config.step) - self.config.step
            self.ledger.set_checkpoint(
                self.config.checkpoint_name,
                {"version": 1, "time": since.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                 "gpu": {}, "tokens": {}},
            )  # fmt: skip
        self.crashes: list[datetime] = []
        """When an injected crash killed an operator (see `crash_once`)."""
        self._gpus = 0

    # -- the world ---------------------------------------------------------------------

    @property
    def operator(self) -> Operator:
        return self.operators[0]

    @property
    def ledger(self) -> Ledger:
        return self.operator.ledger

    def add_plan(self, name: str, spec: Mapping[str, Any]) -> None:
        self.world.plans[name] = PricePlan.model_validate(
            {"metadata": {"name": name}, "spec": dict(spec)}
        )

    def add_tenant(
        self, name: str, *, plan: str, namespaces: Sequence[str] = (), **spec: Any
    ) -> None:
        status = self.world.tenants[name].status if name in self.world.tenants else None
        tenant = Tenant.model_validate(
            {
                "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"pricePlanRef": {"name": plan},
                         "namespaces": list(namespaces) or [name], **spec},
            }
        )  # fmt: skip
        tenant.status = status
        self.world.tenants[name] = tenant

    def gpu(
        self,
        namespace: str,
        pod: str,
        *,
        start: datetime,
        stop: datetime | None = None,
        utilisation: str = "0.5",
    ) -> GpuAllocation:
        """A pod in `namespace` holding one H100 from `start`."""
        self._gpus += 1
        uid = f"uid-{namespace}-{pod}"
        self.world.pods.add(PodMeta(namespace, pod, uid))
        return self.node.allocate(
            namespace=namespace,
            pod=pod,
            pod_uid=uid,
            gpu_uuid=f"GPU-{self._gpus}",
            gpu_model=H100,
            start=start,
            stop=stop,
            utilisation=utilisation,
        )

    def post(self, tenant: str, records: Iterable[UsageRecord]) -> None:
        """Events accepted now (as the events API records them)."""
        batch = list(records)
        result = self.ledger.record_events(tenant, batch)
        assert result.accepted + result.duplicates == len(batch)
        self.posted.extend((self.now, tenant, r) for r in batch)

    def topup(self, tenant: str, amount: str, key: str) -> None:
        self.ledger.topup(tenant, Decimal(amount), "USD", key)
        self.topups[tenant] = self.topups.get(tenant, Decimal(0)) + Decimal(amount)

    # -- time --------------------------------------------------------------------------

    def advance(
        self,
        until: datetime,
        *,
        every: timedelta = timedelta(minutes=5),
        between: Callable[[datetime], None] | None = None,
    ) -> None:
        """Scrape and run a cycle of every operator every `every` until `until`."""
        while self.now < until:
            self.now = min(self.now + every, until)
            if self.scraping:
                self.scraper.advance_to(self.now)
            if between is not None:
                between(self.now)
            if len(self.operators) > 1:
                self._run_concurrently()
                continue
            try:
                self.operator.run_once(self.now)
            except (Crash, Killed):
                self.crashes.append(self.now)
                self.restart()
        assert not self.fake.refused, self.fake.refused

    def _run_concurrently(self) -> None:
        """Every replica runs its cycle at the same simulated instant, in its own thread,
        released together (two operators on one ledger, at once)."""
        barrier = threading.Barrier(len(self.operators))
        errors: list[BaseException] = []

        def run(op: Operator) -> None:
            try:
                barrier.wait()
                op.run_once(self.now)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(op,)) for op in self.operators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def restart(self) -> None:
        """The operator process dies (memory lost) and a new one starts on the same ledger."""
        old = self.operators.pop(0)
        old.close()
        self.operators.insert(0, Operator(self))

    def replica(self) -> Operator:
        op = Operator(self)
        self.operators.append(op)
        return op

    def close(self) -> None:
        for op in self.operators:
            op.close()

    # -- the truth ---------------------------------------------------------------------

    def gpu_truth(self, tenant: str, start: datetime, end: datetime) -> list[GpuUsage]:
        """GPU usage of `tenant`'s namespaces between two instants, from the samples."""
        namespaces = set(self.world.tenants[tenant].spec.namespaces)
        alloc = self.store.increase(ALLOCATED, start, end)
        active = self.store.increase(ACTIVE, start, end)
        out = []
        for labels, value in sorted(alloc.items()):
            lab = dict(labels)
            if lab.get("namespace") not in namespaces or not value:
                continue
            act = active.get(labels, 0.0)  # the same series of the other counter
            out.append(
                GpuUsage(model=lab.get("gpu_model", "unknown"), allocated_ms=int(value),
                         active_ms=min(int(act), int(value)), window_start=start,
                         window_end=end)
            )  # fmt: skip
        return out

    def event_truth(
        self, tenant: str, period: Period, *, before: datetime | None = None
    ) -> list[UsageRecord]:
        return [
            r
            for at, t, r in self.posted
            if t == tenant and period.start <= r.at < period.end and (before is None or at < before)
        ]

    def usage_truth(
        self, tenant: str, period: Period, *, before: datetime | None = None
    ) -> list[UsageRecord]:
        return [*self.gpu_truth(tenant, period.start, period.end),
                *self.event_truth(tenant, period, before=before)]  # fmt: skip


# -- the oracle ------------------------------------------------------------------------


@dataclass
class Report:
    """What `check_invariants` found, for the scenario's own assertions and the note."""

    finalised: dict[tuple[str, str], Statement] = field(default_factory=dict)
    adjustments: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    """(tenant, usage period) -> late usage billed on later statements."""

    def summary(self) -> str:
        return json.dumps(
            {f"{t} {p}": str(s.total) for (t, p), s in sorted(self.finalised.items())}
        )


def check_invariants(tt: TimeTravel, *, closes_announced_once: bool = True) -> Report:
    """Every finalised invoice equals an independent recomputation from the raw usage, each
    period is finalised (and announced) exactly once, wallets conserve money and never go
    negative, and nothing is billed twice or lost."""
    ledger = tt.ledger
    report = Report()
    finals = ledger.finalised()
    open_statements: dict[tuple[str, str], Statement] = {}
    for tenant in tt.world.tenants:
        for period in {p for t, p in ledger.open_periods() if t == tenant}:
            open_statements[(tenant, str(period))] = statements.running_statement(
                ledger, tenant, period
            )
    for final in finals:
        key = (final.tenant, str(final.period))
        stmt = statements.final_statement(ledger, final.tenant, final.period)
        assert stmt is not None
        report.finalised[key] = stmt
        terms = ledger.get_terms(final.tenant, final.period)
        assert terms is not None
        # 1. the invoice is the rating of what was recorded before it was finalised ...
        before = tt.usage_truth(final.tenant, final.period, before=final.finalized_at)
        expected = rate(terms.plan, accumulate(before, final.period), period=final.period,
                        discount_percent=terms.discount_percent)  # fmt: skip
        assert stmt.total == expected.total + stmt.adjustments_total, (key, stmt.total, expected)
        assert [line.quantity for line in stmt.lines] == [
            line.quantity for line in expected.lines
        ], key
        assert Decimal(final.total) == stmt.total
    # ... and the invoice plus its late-usage adjustments is the rating of all its usage
    everything = {**report.finalised, **open_statements}
    for (tenant, _period), stmt in everything.items():
        for adj in stmt.adjustments:
            k = (tenant, adj.period)
            report.adjustments[k] = report.adjustments.get(k, Decimal(0)) + adj.amount
    for (tenant, period_text), stmt in report.finalised.items():
        period = Period.parse(period_text)
        terms = ledger.get_terms(tenant, period)
        assert terms is not None
        own = stmt.total - stmt.adjustments_total
        allusage = tt.usage_truth(tenant, period)
        expected = rate(terms.plan, accumulate(allusage, period), period=period,
                        discount_percent=terms.discount_percent)  # fmt: skip
        late = report.adjustments.get((tenant, period_text), Decimal(0))
        assert own + late == expected.total, (tenant, period_text, own, late, expected.total)
    # 2. each period finalised once, its PeriodClosed posted once (at least once after a
    #    crash between the post and the mark)
    for final in finals:
        posted = [
            e for e in tt.kube.events
            if e.tenant == final.tenant and e.reason == "PeriodClosed"
            and f"period {final.period} " in e.message
        ]  # fmt: skip
        if final.tenant in tt.world.tenants:
            assert len(posted) == 1 if closes_announced_once else len(posted) >= 1, (
                final, posted)  # fmt: skip
    assert len({(f.tenant, str(f.period)) for f in finals}) == len(finals)
    # 3. wallets conserve money and never go negative
    for tenant in tt.world.tenants:
        wallet = ledger.wallet(tenant)
        assert wallet.balance >= 0
        assert wallet.topped_up == tt.topups.get(tenant, Decimal(0))
        assert wallet.topped_up - wallet.taken == wallet.balance
        settled = {s.period: s for s in ledger.settlements(tenant)}
        for (t, p), stmt in report.finalised.items():
            if t == tenant and p in settled:
                s = settled[p]
                assert s.paid + s.outstanding == max(stmt.total, Decimal(0)), (t, p, s)
        assert sum((s.paid for s in settled.values()), Decimal(0)) == wallet.taken
    # 4. nothing billed twice or lost: every millisecond and token of the truth is in the
    #    ledger exactly once (invoices, adjustments and open periods together)
    metered_until = tt.operator.metering.metered_until()
    assert metered_until is not None
    for tenant in tt.world.tenants:
        truth_ms = sum(g.allocated_ms for g in tt.gpu_truth(tenant, tt.start, metered_until))
        booked_ms = 0
        for booked in _booked_periods(ledger, tenant):
            totals = ledger.period_totals(tenant, booked)
            booked_ms += sum(q.allocated_ms for k, q in totals.items() if k.kind == "gpu")
            for late in ledger.late_totals(tenant, booked).values():
                booked_ms += sum(q.allocated_ms for k, q in late.items() if k.kind == "gpu")
        assert booked_ms == truth_ms, (tenant, booked_ms, truth_ms)
    return report


def _booked_periods(ledger: Ledger, tenant: str) -> list[Period]:
    periods = {f.period for f in ledger.finalised() if f.tenant == tenant}
    periods.update(p for t, p in ledger.open_periods() if t == tenant)
    return sorted(periods)


__all__ = [
    "H100",
    "MS_PER_HOUR",
    "Crash",
    "KubeRecorder",
    "Operator",
    "Report",
    "TimeTravel",
    "World",
    "apply_merge_patch",
    "check_invariants",
    "crash_once",
]
