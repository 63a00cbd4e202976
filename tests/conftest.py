"""Test-suite wiring. Fixture plugins live in tests/support (on sys.path via pytest's
`pythonpath = ["tests"]`; the repo root is never put on sys.path, so `operator/` cannot
shadow the standard library).

- support.cluster: `kube_cluster`, a real kube-apiserver (or KUBEMETER_KUBECONFIG's cluster)
- support.postgres: `postgres_url`, `ledger_url` (SQLite and a real PostgreSQL)
- support.prometheus: `prometheus_factory`, real Prometheus servers
- support.backfill: `backfill_factory`, real Prometheus on backfilled history (promtool)
"""

pytest_plugins = [
    "support.cluster",
    "support.postgres",
    "support.prometheus",
    "support.backfill",
]
