"""The webhook body: a CloudEvents 1.0 structured-mode envelope whose bytes never change
between attempts."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from kubemeter_operator.ledger.outbox import OutboxRow, notice_id
from kubemeter_operator.notifications.cloudevents import envelope, envelope_bytes

CREATED = datetime(2026, 11, 20, 9, 31, tzinfo=UTC)


def row(data: dict[str, Any] | None = None, **changes: Any) -> OutboxRow:
    base = OutboxRow(
        id=notice_id("acme", "2026-11/threshold/80"),
        tenant="acme",
        key="2026-11/threshold/80",
        period="2026-11",
        type="BudgetThresholdCrossed",
        severity="Warning",
        message="tenant acme reached 80% of its budget for 2026-11: spent 812.5 USD",
        data={"spent": "812.5", "limit": "1000", "currency": "USD", "threshold": 80}
        if data is None
        else data,
        created_at=CREATED,
        event_state="posted",
        webhook_state="pending",
        attempts=0,
        next_attempt_at=CREATED,
        last_attempt_at=None,
        last_error=None,
        delivered_at=None,
    )
    return dataclasses.replace(base, **changes)


def test_envelope_has_the_cloudevents_attributes_of_the_row() -> None:
    event = json.loads(envelope_bytes(row()))
    assert event == {
        "specversion": "1.0",
        "id": notice_id("acme", "2026-11/threshold/80"),
        "source": "/apis/kubemeter.dev/v1alpha1/tenants/acme",
        "type": "dev.kubemeter.BudgetThresholdCrossed",
        "subject": "acme",
        "time": "2026-11-20T09:31:00Z",
        "datacontenttype": "application/json",
        "data": {
            "tenant": "acme",
            "reason": "BudgetThresholdCrossed",
            "message": "tenant acme reached 80% of its budget for 2026-11: spent 812.5 USD",
            "severity": "Warning",
            "period": "2026-11",
            "spent": "812.5",
            "limit": "1000",
            "currency": "USD",
            "threshold": 80,
        },
    }
    assert len(event["id"]) == 64


def test_bytes_are_canonical_json_identical_whatever_the_attempt_state() -> None:
    first = envelope_bytes(row())
    reordered = {"threshold": 80, "currency": "USD", "limit": "1000", "spent": "812.5"}
    later = row(
        reordered,
        attempts=5,
        webhook_state="pending",
        last_attempt_at=datetime(2026, 11, 21, tzinfo=UTC),
        last_error="HTTP 500",
    )
    assert envelope_bytes(later) == first
    assert first == json.dumps(
        json.loads(first), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_the_time_is_rfc3339_utc_of_the_notice_not_of_the_attempt() -> None:
    at = datetime(2026, 11, 20, 9, 31, 0, 250000, tzinfo=UTC)
    assert envelope(row(created_at=at))["time"] == "2026-11-20T09:31:00.250000Z"


def test_notice_data_never_overrides_the_documented_fields() -> None:
    data = envelope(row({"tenant": "mallory", "reason": "X", "spent": "1"}))["data"]
    assert data["tenant"] == "acme"
    assert data["reason"] == "BudgetThresholdCrossed"
    assert data["spent"] == "1"


def test_period_is_left_out_when_the_notice_has_none() -> None:
    assert "period" not in envelope(row(period=None))["data"]


def test_non_ascii_text_is_sent_as_utf8() -> None:
    body = envelope_bytes(row(message="Mandant Müller: 80 % erreicht"))
    assert "Müller".encode() in body
    assert json.loads(body)["data"]["message"] == "Mandant Müller: 80 % erreicht"
