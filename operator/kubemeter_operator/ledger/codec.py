"""Canonical payloads: what makes two submissions of the same key "the same".

A record's canonical form is its wire form (camelCase, unset optionals left out) with every
instant in UTC (``...Z``) and every decimal without trailing zeros, as JSON with sorted keys
and no spaces. Two payloads are the same when their sha256 hashes are equal, so a replay in
another time zone offset or with ``"1.50"`` for ``"1.5"`` is still a replay.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from kubemeter_operator.api.usage import CustomUsage, GpuUsage, UsageRecord
from kubemeter_operator.ledger.columns import plain

RECORD: TypeAdapter[UsageRecord] = TypeAdapter(UsageRecord)


def _canon(value: Any) -> Any:
    if isinstance(value, datetime):
        return instant(value)
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_canon(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_json(record: UsageRecord) -> str:
    """The canonical JSON of a usage record (it parses back with `parse_record`)."""
    data = record.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(record, GpuUsage):
        data["windowStart"] = instant(record.window_start)
        data["windowEnd"] = instant(record.window_end)
    else:
        data["timestamp"] = instant(record.timestamp)
        if isinstance(record, CustomUsage):  # the serializer keeps the caller's digits
            data["quantity"] = plain(record.quantity)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def instant(value: datetime) -> str:
    """Canonical UTC ISO 8601 text: 2026-11-01T00:00:00Z, microseconds only when non-zero."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def parse_record(payload: str) -> UsageRecord:
    return RECORD.validate_json(payload)
