"""The webhook body: a CloudEvents 1.0 envelope in structured JSON mode. Pure.

    body = envelope_bytes(row)      # the same bytes on every attempt of the same row

    {"data":{"currency":"USD","limit":"1000","message":"tenant acme reached 80% ...",
             "period":"2026-11","reason":"BudgetThresholdCrossed","severity":"Warning",
             "spent":"812.5","tenant":"acme","threshold":80},
     "datacontenttype":"application/json",
     "id":"<64 hex digits: sha256 of tenant and notice key>",
     "source":"/apis/kubemeter.dev/v1alpha1/tenants/acme",
     "specversion":"1.0","subject":"acme","time":"2026-11-20T09:31:00Z",
     "type":"dev.kubemeter.BudgetThresholdCrossed"}

Stable by construction: every attribute comes from the stored outbox row (the id, the
notice's creation time, its canonical `data`), never from the attempt, and the bytes are
canonical JSON (sorted keys, no spaces, UTF-8, decimals as strings, instants in UTC), so a
retry, a restart or another replica sends the identical body. The attempt's own time goes
in the signature header only (`signing`).

`type` is `dev.kubemeter.` + the Kubernetes Event reason, unchanged (the reasons are stable
API: README "Webhooks"). `data` always has tenant, reason, message and severity, and period
when the notice belongs to one; the event-specific fields come from the notice and never
override those.

Never put anything secret here, and never anything that changes between attempts.
"""

from __future__ import annotations

from typing import Any

from kubemeter_operator.api.priceplan import GROUP, VERSION
from kubemeter_operator.ledger.codec import canonical_json, instant
from kubemeter_operator.ledger.outbox import OutboxRow

SPEC_VERSION = "1.0"
TYPE_PREFIX = "dev.kubemeter."
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
DATA_CONTENT_TYPE = "application/json"

REASONS = (
    "BudgetThresholdCrossed",
    "BudgetExceeded",
    "WorkloadsSuspended",
    "WorkloadsRestored",
    "EnforcementFought",
    "WalletLow",
    "WalletEmpty",
    "GpuPodLeftRunning",
    "GpuPodDeleted",
)
"""The notice reasons kubemeter announces (README "Webhooks" documents each one's data)."""


def event_type(reason: str) -> str:
    """`BudgetThresholdCrossed` -> `dev.kubemeter.BudgetThresholdCrossed`."""
    return TYPE_PREFIX + reason


def source(tenant: str) -> str:
    """The Tenant's API path: `/apis/kubemeter.dev/v1alpha1/tenants/<tenant>`."""
    return f"/apis/{GROUP}/{VERSION}/tenants/{tenant}"


def envelope(row: OutboxRow) -> dict[str, Any]:
    """The CloudEvents attributes and data of an outbox row (as plain JSON values)."""
    data: dict[str, Any] = {
        **row.data,
        "tenant": row.tenant,
        "reason": row.type,
        "message": row.message,
        "severity": row.severity,
        "period": row.period,
    }
    if data["period"] is None:
        del data["period"]
    return {
        "specversion": SPEC_VERSION,
        "id": row.id,
        "source": source(row.tenant),
        "type": event_type(row.type),
        "subject": row.tenant,
        "time": instant(row.created_at),
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": data,
    }


def envelope_bytes(row: OutboxRow) -> bytes:
    """The webhook body: canonical JSON of `envelope(row)`, UTF-8."""
    return canonical_json(envelope(row)).encode("utf-8")


__all__ = [
    "CONTENT_TYPE",
    "DATA_CONTENT_TYPE",
    "REASONS",
    "SPEC_VERSION",
    "TYPE_PREFIX",
    "envelope",
    "envelope_bytes",
    "event_type",
    "source",
]
