"""The operator's per-tenant metrics (`telemetry.contract`), registered on one registry.

`TenantMetrics` holds three kinds of thing:

- a collector that renders the Tenant gauges from the Tenant status at scrape time
  (`tenant_samples`, pure): nothing is stored, so nothing can go stale or outlive its Tenant;
- the per-tenant counters, incremented by the hooks of the replica that acts (`metered`
  after a committed metering window, `enforced` after an enforcement change), created at 0
  for every known Tenant (`known`) and removed with it (`forget`);
- `kubemeter_operator_leading`, evaluated at scrape time (`set_leading`).

It never decides, writes or prices anything, and the `Decimal` -> `float` conversion of money
happens here, in `_float`, only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from kubemeter_exporter.contract import MetricSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.telemetry import contract as c

Sample = tuple[MetricSpec, tuple[str, ...], float]
"""(metric, label values in the spec's order, value)."""


class UsageCounts(Protocol):
    """What one committed metering window billed a tenant (`metering.cycle.TenantUsage`)."""

    @property
    def allocated_ms(self) -> int: ...
    @property
    def active_ms(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_prompt_tokens(self) -> int: ...


def _float(value: Decimal) -> float:
    """Money and quantities leave exact arithmetic here: Prometheus samples are floats."""
    return float(value)


def _ts(at: datetime) -> float:
    return at.timestamp()


def tenant_samples(tenant: Tenant) -> list[Sample]:
    """The gauge samples of one Tenant, from its status (none before the first status)."""
    name = tenant.name
    out: list[Sample] = [(c.TENANT_INFO, (name, tenant.spec.price_plan_ref.name), 1.0)]
    status = tenant.status
    if status is None:
        return out
    money = (name, status.currency) if status.currency else None
    if money is not None and status.total is not None:
        out.append((c.TENANT_SPEND, money, _float(status.total)))
    if status.budget is not None:
        if money is not None:
            out.append((c.TENANT_BUDGET_LIMIT, money, _float(status.budget.limit)))
        if status.budget.limit > 0:
            ratio = _float(status.budget.used / status.budget.limit)
            out.append((c.TENANT_BUDGET_USED_RATIO, (name,), ratio))
    if status.forecast is not None:
        if money is not None:
            projected = _float(status.forecast.projected_total)
            out.append((c.TENANT_FORECAST_SPEND, money, projected))
        if status.forecast.budget_exhausted_at is not None:
            at = _ts(status.forecast.budget_exhausted_at)
            out.append((c.TENANT_BUDGET_EXHAUSTED_AT, (name,), at))
    if status.wallet is not None:
        if money is not None:
            out.append((c.TENANT_WALLET_BALANCE, money, _float(status.wallet.balance)))
        out.append((c.TENANT_WALLET_LOW, (name,), 1.0 if status.wallet.low else 0.0))
    if status.phase is not None:
        for phase in c.PHASES:
            out.append((c.TENANT_PHASE, (name, phase), 1.0 if status.phase == phase else 0.0))
    out.append((c.TENANT_SUSPENDED_WORKLOADS, (name,), float(len(status.suspended_workloads))))
    enforcement = status.enforcement
    if money is not None and enforcement is not None and enforcement.overshoot is not None:
        out.append((c.TENANT_OVERSHOOT, money, _float(enforcement.overshoot)))
    if status.period_end is not None:
        out.append((c.TENANT_PERIOD_END, (name,), _ts(status.period_end)))
    if status.last_metered_time is not None:
        out.append((c.TENANT_LAST_METERED, (name,), _ts(status.last_metered_time)))
    return out


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "info":
        return InfoMetricFamily(spec.family, spec.help, labels=spec.labels[:1])
    return GaugeMetricFamily(spec.family, spec.help, labels=spec.labels)


class TenantStatusCollector(Collector):
    """The Tenant gauges, rendered from `tenants()` (name -> Tenant) at every scrape.

    `tenants` is called from the metrics server's thread: it must return a snapshot (a
    `dict(...)` copy of the service's map is one, taken under the GIL)."""

    def __init__(self, tenants: Callable[[], Mapping[str, Tenant]]) -> None:
        self._tenants = tenants

    def describe(self) -> Iterable[Metric]:
        return [_family(spec) for spec in c.STATUS_METRICS]

    def collect(self) -> Iterable[Metric]:
        families = {spec.name: _family(spec) for spec in c.STATUS_METRICS}
        for _, tenant in sorted(self._tenants().items()):
            for spec, labels, value in tenant_samples(tenant):
                family = families[spec.name]
                if isinstance(family, InfoMetricFamily):
                    family.add_metric(
                        labels[:1], dict(zip(spec.labels[1:], labels[1:], strict=True))
                    )
                elif isinstance(family, GaugeMetricFamily):
                    family.add_metric(labels, value)
        return list(families.values())


class TenantMetrics:
    """The contract's metrics on `registry` (default: the global one)."""

    def __init__(
        self,
        tenants: Callable[[], Mapping[str, Tenant]],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._tenants = tenants
        self._leading: Callable[[], bool] = lambda: False

        def counter(spec: MetricSpec) -> Counter:
            return Counter(spec.family, spec.help, list(spec.labels), registry=registry)

        self.gpu_allocated_ms = counter(c.TENANT_GPU_ALLOCATED_MS)
        self.gpu_active_ms = counter(c.TENANT_GPU_ACTIVE_MS)
        self.tokens = counter(c.TENANT_TOKENS)
        self.actions = counter(c.ENFORCEMENT_ACTIONS)
        self.leading = Gauge(c.OPERATOR_LEADING.family, c.OPERATOR_LEADING.help, registry=registry)
        self.leading.set_function(lambda: 1.0 if self._leading() else 0.0)
        self.status = TenantStatusCollector(tenants)
        if registry is not None:
            registry.register(self.status)

    def set_leading(self, leading: Callable[[], bool]) -> None:
        """Whether this replica acts now (read at every scrape)."""
        self._leading = leading

    def _children(self, tenant: str) -> list[tuple[Counter, tuple[str, ...]]]:
        return [
            (self.gpu_allocated_ms, (tenant,)),
            (self.gpu_active_ms, (tenant,)),
            *((self.tokens, (tenant, kind)) for kind in c.TOKEN_KINDS),
            *((self.actions, (tenant, action)) for action in c.ACTIONS),
        ]

    def known(self, tenant: str) -> None:
        """A Tenant exists: its counters start at 0 (so `increase()` sees the first count)."""
        for metric, labels in self._children(tenant):
            metric.labels(*labels)

    def forget(self, tenant: str) -> None:
        """A Tenant was deleted: its counter series go (its gauges go with its status)."""
        for metric, labels in self._children(tenant):
            metric.remove(*labels)

    def metered(self, usage: Mapping[str, UsageCounts]) -> None:
        """Count one committed metering window (tenant -> what it was billed). Names that
        are not a current Tenant (`_unassigned`: see `kubemeter_unassigned_*`; a Tenant
        deleted meanwhile) are left out, so no series outlives its Tenant."""
        current = self._tenants()
        for tenant, u in usage.items():
            if tenant not in current:
                continue
            self.gpu_allocated_ms.labels(tenant).inc(u.allocated_ms)
            self.gpu_active_ms.labels(tenant).inc(u.active_ms)
            for kind, n in (("prompt", u.prompt_tokens), ("completion", u.completion_tokens),
                            ("cached_prompt", u.cached_prompt_tokens)):  # fmt: skip
                self.tokens.labels(tenant, kind).inc(n)

    def enforced(self, tenant: str, action: str) -> None:
        """Count an enforcement change (`contract.ACTIONS`) of a current Tenant."""
        if action in c.ACTIONS and tenant in self._tenants():
            self.actions.labels(tenant, action).inc()


__all__ = ["TenantMetrics", "TenantStatusCollector", "UsageCounts", "tenant_samples"]
