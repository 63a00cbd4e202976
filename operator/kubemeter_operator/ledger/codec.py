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
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses
from typing import Any

from pydantic import BaseModel, TypeAdapter

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


_Plan = tuple[tuple[str, str], ...]
"""Per model class: ('"jsonKey":', attribute name) for every field, in key order."""

_PLANS: dict[type, _Plan | None] = {}


def _plan(cls: type[BaseModel]) -> _Plan | None:
    """The serialisation plan of a record class (None: use the generic path)."""
    if cls.model_config.get("extra") != "forbid" or cls.model_computed_fields:
        return None
    items: list[tuple[str, str]] = []
    for name, info in cls.model_fields.items():
        if info.exclude:
            return None
        alias = info.serialization_alias or info.alias or name
        items.append((alias, name))
    items.sort()
    return tuple((encode_basestring(alias) + ":", name) for alias, name in items)


def record_json(record: UsageRecord) -> str:
    """The canonical JSON of a usage record (it parses back with `parse_record`).

    Written directly from the validated fields (the hot path of every ingest): the same
    text as `json.dumps(wire form, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` with instants in UTC and decimals in plain notation."""
    cls = type(record)
    try:
        plan = _PLANS[cls]
    except KeyError:
        plan = _PLANS[cls] = _plan(cls)
    if plan is None:
        return _record_json_generic(record)
    out: list[str] = []
    for key, name in plan:
        value = getattr(record, name)
        kind = type(value)
        if kind is str:
            out.append(key + encode_basestring(value))
        elif kind is int:
            out.append(key + int.__repr__(value))
        elif value is None:
            continue
        elif kind is datetime:
            out.append(key + '"' + instant(value) + '"')
        elif kind is Decimal:
            out.append(key + '"' + plain(value) + '"')
        else:  # anything unusual: the generic path decides
            return _record_json_generic(record)
    return "{" + ",".join(out) + "}"


def _record_json_generic(record: UsageRecord) -> str:
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
    """sha256 (hex) of the parts, each followed by a NUL byte."""
    return hashlib.sha256("\x00".join((*parts, "")).encode()).hexdigest()


def parse_record(payload: str) -> UsageRecord:
    return RECORD.validate_json(payload)
