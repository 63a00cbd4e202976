"""The operator's per-tenant metric contract: every name, type, label set and help text.

The chart's PrometheusRule (`charts/kubemeter/files/prometheus-rules.yaml`) and Grafana
dashboard (`charts/kubemeter/files/dashboards/kubemeter.json`) use these names, and a test
holds them to this module, `kubemeter_exporter.contract`, `metering.metrics` (metering health,
unassigned usage, quarantine) and `notifications.metrics` (webhooks). Do not rename a metric
or a label without changing them too.

Where the values come from, and which replica exports them
----------------------------------------------------------
* **Tenant gauges** (`kubemeter_tenant_*` without `_total`) are rendered at scrape time from
  the Tenant *status* each replica watches (`status.total`, `.budget`, `.wallet`, `.phase`,
  `.forecast`, `.suspendedWorkloads`, `.enforcement.overshoot`, `.lastMeteredTime`): what the
  leader computed and wrote in its last cycle, and what `kubectl get tenants` shows. Every
  replica therefore exports the same values (a standby is exactly as fresh as the status,
  never a memory of its own time as leader), a deleted Tenant's series disappear with it, and
  a Tenant the operator has not written a status for yet has none. Aggregate replicas with
  `max by (tenant, ...)`. A stale status (no leader) shows in
  `kubemeter_tenant_last_metered_timestamp_seconds` and `kubemeter_operator_leading`.
* **Per-tenant counters** (`_total`) are incremented by the replica that committed the metering
  window (usage) or made the enforcement change, so only the leader's grow; a standby's stay
  flat. `sum by (tenant) (rate(...))` over replicas is right; a replica's counters start at 0
  for every known Tenant (so `increase()` sees the first window) and are removed when the
  Tenant is deleted. Usage counters count what metering read from Prometheus (GPU time from
  the exporter, tokens from the PricePlans' sources), not usage posted to the events API (that
  is in the ledger and in `kubemeter_tenant_spend`). `prompt` tokens include the cached ones
  (cached share = cached_prompt / prompt).
* Money gauges are floats, because Prometheus samples are: the exact `Decimal` of the status
  is converted with `float()` at collection and nowhere else. They are for graphs and alerts;
  invoices come from the ledger.

Cardinality: `tenant` takes Tenant names only (bounded by the cluster's Tenants), `currency`
one ISO 4217 code per tenant, `phase`, `kind` and `action` small fixed sets.
"""

from __future__ import annotations

from typing import Final

from kubemeter_exporter.contract import MetricSpec

LABEL_TENANT: Final = "tenant"
LABEL_CURRENCY: Final = "currency"
LABEL_PHASE: Final = "phase"
LABEL_KIND: Final = "kind"
LABEL_ACTION: Final = "action"
LABEL_PRICE_PLAN: Final = "price_plan"

PHASES: Final = ("Active", "Warning", "Suspended")
"""Values of the `phase` state set (`api.tenant.TenantPhase`)."""
TOKEN_KINDS: Final = ("prompt", "completion", "cached_prompt")
"""Values of `kind` on token counters (as on `kubemeter_unassigned_tokens_total`)."""
ACTIONS: Final = ("suspend", "restore")
"""Values of `action`: a suspension started, a suspension restored (finished)."""

_T: Final = (LABEL_TENANT,)
_MONEY: Final = (LABEL_TENANT, LABEL_CURRENCY)

# ---------------------------------------------------------------- from the Tenant status
TENANT_INFO: Final = MetricSpec(
    name="kubemeter_tenant_info",
    type="info",
    help="One series per Tenant with its price plan (value 1).",
    labels=(LABEL_TENANT, LABEL_PRICE_PLAN),
)
TENANT_SPEND: Final = MetricSpec(
    name="kubemeter_tenant_spend",
    type="gauge",
    help="Running total of the tenant's current period (platform fee included, after "
    "discount; status.total), in its plan's currency.",
    labels=_MONEY,
)
TENANT_BUDGET_LIMIT: Final = MetricSpec(
    name="kubemeter_tenant_budget_limit",
    type="gauge",
    help="The tenant's budget limit per period (spec.budget.limit), in its plan's currency.",
    labels=_MONEY,
)
TENANT_BUDGET_USED_RATIO: Final = MetricSpec(
    name="kubemeter_tenant_budget_used_ratio",
    type="gauge",
    help="Period total / budget limit (1 = the budget is spent; status.budget).",
    labels=_T,
)
TENANT_FORECAST_SPEND: Final = MetricSpec(
    name="kubemeter_tenant_forecast_spend",
    type="gauge",
    help="Projected total at the end of the current period at the recent burn rate "
    "(status.forecast.projectedTotal).",
    labels=_MONEY,
)
TENANT_BUDGET_EXHAUSTED_AT: Final = MetricSpec(
    name="kubemeter_tenant_budget_exhausted_timestamp_seconds",
    type="gauge",
    help="Unix time the budget runs out at the recent burn rate, when it does within the "
    "period (status.forecast.budgetExhaustedAt).",
    labels=_T,
)
TENANT_WALLET_BALANCE: Final = MetricSpec(
    name="kubemeter_tenant_wallet_balance",
    type="gauge",
    help="Prepaid wallet balance (status.wallet.balance), in the plan's currency.",
    labels=_MONEY,
)
TENANT_WALLET_LOW: Final = MetricSpec(
    name="kubemeter_tenant_wallet_low",
    type="gauge",
    help="1 when the prepaid wallet is below its low-balance threshold or empty, else 0.",
    labels=_T,
)
TENANT_PHASE: Final = MetricSpec(
    name="kubemeter_tenant_phase",
    type="gauge",
    help="1 for the tenant's phase (Active, Warning, Suspended), 0 for the others.",
    labels=(LABEL_TENANT, LABEL_PHASE),
)
TENANT_SUSPENDED_WORKLOADS: Final = MetricSpec(
    name="kubemeter_tenant_suspended_workloads",
    type="gauge",
    help="Workloads kubemeter holds stopped for the tenant (status.suspendedWorkloads).",
    labels=_T,
)
TENANT_OVERSHOOT: Final = MetricSpec(
    name="kubemeter_tenant_overshoot",
    type="gauge",
    help="Spend above the limit (or the wallet shortfall) when the latest enforcement had "
    "stopped the tenant's GPU workloads (status.enforcement.overshoot).",
    labels=_MONEY,
)
TENANT_PERIOD_END: Final = MetricSpec(
    name="kubemeter_tenant_period_end_timestamp_seconds",
    type="gauge",
    help="Unix time the tenant's current billing period ends (status.periodEnd).",
    labels=_T,
)
TENANT_LAST_METERED: Final = MetricSpec(
    name="kubemeter_tenant_last_metered_timestamp_seconds",
    type="gauge",
    help="End of the last metering window reflected in the tenant's status.",
    labels=_T,
)

# ---------------------------------------------------------------- counted by the leader
TENANT_GPU_ALLOCATED_MS: Final = MetricSpec(
    name="kubemeter_tenant_gpu_allocated_milliseconds_total",
    type="counter",
    help="GPU milliseconds allocated to the tenant's pods, as metered into the ledger.",
    labels=_T,
)
TENANT_GPU_ACTIVE_MS: Final = MetricSpec(
    name="kubemeter_tenant_gpu_active_milliseconds_total",
    type="counter",
    help="Active GPU milliseconds (allocated x SM share) of the tenant's pods, as metered.",
    labels=_T,
)
TENANT_TOKENS: Final = MetricSpec(
    name="kubemeter_tenant_tokens_total",
    type="counter",
    help="LLM tokens metered from Prometheus for the tenant, by kind (prompt, completion, "
    "cached_prompt; prompt includes the cached ones).",
    labels=(LABEL_TENANT, LABEL_KIND),
)
ENFORCEMENT_ACTIONS: Final = MetricSpec(
    name="kubemeter_enforcement_actions_total",
    type="counter",
    help="Enforcement changes made for the tenant, by action (suspend: a suspension "
    "started; restore: its workloads were given back).",
    labels=(LABEL_TENANT, LABEL_ACTION),
)

# ---------------------------------------------------------------- the replica
OPERATOR_LEADING: Final = MetricSpec(
    name="kubemeter_operator_leading",
    type="gauge",
    help="1 while this replica holds the Lease and acts (meters, bills, enforces), else 0.",
    labels=(),
)

STATUS_METRICS: Final[tuple[MetricSpec, ...]] = (
    TENANT_INFO,
    TENANT_SPEND,
    TENANT_BUDGET_LIMIT,
    TENANT_BUDGET_USED_RATIO,
    TENANT_FORECAST_SPEND,
    TENANT_BUDGET_EXHAUSTED_AT,
    TENANT_WALLET_BALANCE,
    TENANT_WALLET_LOW,
    TENANT_PHASE,
    TENANT_SUSPENDED_WORKLOADS,
    TENANT_OVERSHOOT,
    TENANT_PERIOD_END,
    TENANT_LAST_METERED,
)
"""Rendered from the Tenant status at scrape time."""
COUNTERS: Final[tuple[MetricSpec, ...]] = (
    TENANT_GPU_ALLOCATED_MS,
    TENANT_GPU_ACTIVE_MS,
    TENANT_TOKENS,
    ENFORCEMENT_ACTIONS,
)
METRICS: Final[tuple[MetricSpec, ...]] = (*STATUS_METRICS, *COUNTERS, OPERATOR_LEADING)
