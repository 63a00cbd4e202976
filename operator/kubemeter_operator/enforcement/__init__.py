"""Budget enforcement, the Kubernetes side: find the GPU workloads of a Tenant, stop them
(write-ahead in the ledger), restore them exactly, and stop them again when something fights.
Acts on `budget.decision`; never decides."""
