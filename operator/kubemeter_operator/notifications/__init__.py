"""Notifications: budget notices as Kubernetes Events and signed CloudEvents webhooks,
delivered from the ledger's outbox (at least once, the same id on every retry)."""
