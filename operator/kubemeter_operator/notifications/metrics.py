"""The operator's metrics for notifications: names, types, labels and help defined once.

- `kubemeter_webhook_deliveries_total{tenant,outcome}`: webhook attempts recorded in the
  ledger by this replica, by outcome: `delivered`, `failed` (retried later) or `dead`
  (dead-lettered: attempts used up, or the webhook was removed).
- `kubemeter_webhook_last_delivery_state{tenant,state}`: 1 for the state of the tenant's
  latest delivery (`delivered`, `retrying`, `dead`), 0 for the other two. From the ledger,
  so it survives restarts and agrees between replicas (what status.notification shows).
- `kubemeter_webhook_last_attempt_timestamp_seconds{tenant}`: when that latest attempt was.
- `kubemeter_webhook_dead_letters{tenant}`: deliveries of the tenant that gave up.
- `kubemeter_notification_events_total{outcome}`: Kubernetes Events for notices: `posted`,
  `skipped` (the Tenant is gone), `failed` (posted again on the next pass).

Alert on `kubemeter_webhook_dead_letters > 0` or on
`kubemeter_webhook_last_delivery_state{state!="delivered"} == 1` for long.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from kubemeter_exporter.contract import MetricSpec
from kubemeter_operator.ledger.outbox import DeliverySummary

AttemptOutcome = Literal["delivered", "failed", "dead"]
EventOutcome = Literal["posted", "skipped", "failed"]

LABEL_TENANT: Final = "tenant"
LABEL_OUTCOME: Final = "outcome"
LABEL_STATE: Final = "state"
DELIVERY_STATES: Final = ("delivered", "retrying", "dead")

WEBHOOK_DELIVERIES: Final = MetricSpec(
    name="kubemeter_webhook_deliveries_total",
    type="counter",
    help="Webhook delivery attempts recorded, by outcome (delivered, failed, dead).",
    labels=(LABEL_TENANT, LABEL_OUTCOME),
)
WEBHOOK_LAST_DELIVERY_STATE: Final = MetricSpec(
    name="kubemeter_webhook_last_delivery_state",
    type="gauge",
    help="1 for the state of the tenant's latest webhook delivery (delivered, retrying, "
    "dead), 0 for the others.",
    labels=(LABEL_TENANT, LABEL_STATE),
)
WEBHOOK_LAST_ATTEMPT: Final = MetricSpec(
    name="kubemeter_webhook_last_attempt_timestamp_seconds",
    type="gauge",
    help="Unix time of the tenant's latest webhook delivery attempt.",
    labels=(LABEL_TENANT,),
)
WEBHOOK_DEAD_LETTERS: Final = MetricSpec(
    name="kubemeter_webhook_dead_letters",
    type="gauge",
    help="Webhook deliveries of the tenant that were dead-lettered (kept in the outbox).",
    labels=(LABEL_TENANT,),
)
NOTIFICATION_EVENTS: Final = MetricSpec(
    name="kubemeter_notification_events_total",
    type="counter",
    help="Kubernetes Events for notices, by outcome (posted, skipped, failed).",
    labels=(LABEL_OUTCOME,),
)

METRICS: Final = (
    WEBHOOK_DELIVERIES,
    WEBHOOK_LAST_DELIVERY_STATE,
    WEBHOOK_LAST_ATTEMPT,
    WEBHOOK_DEAD_LETTERS,
    NOTIFICATION_EVENTS,
)


class NotificationMetrics:
    """The metrics above, registered on `registry` (default: the global one)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        def counter(spec: MetricSpec) -> Counter:
            return Counter(spec.family, spec.help, list(spec.labels), registry=registry)

        def gauge(spec: MetricSpec) -> Gauge:
            return Gauge(spec.family, spec.help, list(spec.labels), registry=registry)

        self.deliveries = counter(WEBHOOK_DELIVERIES)
        self.last_state = gauge(WEBHOOK_LAST_DELIVERY_STATE)
        self.last_attempt = gauge(WEBHOOK_LAST_ATTEMPT)
        self.dead_letters = gauge(WEBHOOK_DEAD_LETTERS)
        self.events = counter(NOTIFICATION_EVENTS)

    def attempt(self, tenant: str, outcome: AttemptOutcome) -> None:
        self.deliveries.labels(tenant, outcome).inc()

    def event(self, outcome: EventOutcome, count: int = 1) -> None:
        if count:
            self.events.labels(outcome).inc(count)

    def observe(self, summaries: Mapping[str, DeliverySummary]) -> None:
        """Set the per-tenant gauges from the ledger's delivery summaries."""
        for tenant, summary in summaries.items():
            for state in DELIVERY_STATES:
                self.last_state.labels(tenant, state).set(1 if summary.state == state else 0)
            self.last_attempt.labels(tenant).set(summary.at.timestamp())
            self.dead_letters.labels(tenant).set(summary.dead_letters)


__all__ = [
    "DELIVERY_STATES",
    "METRICS",
    "NOTIFICATION_EVENTS",
    "WEBHOOK_DEAD_LETTERS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_LAST_ATTEMPT",
    "WEBHOOK_LAST_DELIVERY_STATE",
    "AttemptOutcome",
    "EventOutcome",
    "NotificationMetrics",
]
