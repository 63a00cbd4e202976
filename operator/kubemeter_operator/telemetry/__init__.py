"""The operator's per-tenant Prometheus metrics: the contract (`contract`, names defined
once) and the metrics themselves (`metrics.TenantMetrics`).

An edge of the data flow beside metering and notifications: it reads what the other steps
produced (the Tenant status, committed metering windows, enforcement transitions) and never
decides, writes or prices anything. It imports no kopf, no ledger and no sibling edge.
"""
