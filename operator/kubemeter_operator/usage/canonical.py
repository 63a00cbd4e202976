"""The canonical form of usage: what makes two submissions of the same event "the same".

A record's canonical form is its wire form (camelCase, unset optionals left out) with every
instant in UTC (``...Z``) and every decimal in plain notation without trailing zeros, as JSON
with sorted keys and no spaces. So a replay written with another time zone offset, or with
``"1.50"`` for ``"1.5"``, is still the same payload:

    record_json(record)   -> '{"completionTokens":5,"kind":"tokens",...}'
    plain(Decimal("10.50")) -> "10.5"
    instant(datetime(2026, 11, 1, 1, tzinfo=+01:00)) -> "2026-11-01T00:00:00Z"

This is the one implementation: the ledger hashes and stores it, `kubemeter quote` and the
events API compare payloads of one event id with it. Pure: it never imports the ledger, a
database driver, kopf or kubernetes, and it never changes a record (it only writes text).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses
from typing import Any

from pydantic import BaseModel

from kubemeter_operator.api.usage import CustomUsage, GpuUsage, UsageRecord


def plain(value: Decimal) -> str:
    """Plain notation without trailing fractional zeros: Decimal("10.50") -> "10.5".

    Pure text manipulation (no context rounding, unlike Decimal.normalize())."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def instant(value: datetime) -> str:
    """Canonical UTC ISO 8601 text: 2026-11-01T00:00:00Z, microseconds only when non-zero."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
    """Canonical JSON of any plain value (dicts, lists, instants, decimals): sorted keys, no
    spaces, None-valued keys left out, instants in UTC, decimals in plain notation."""
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
    """The canonical JSON of a usage record (it validates back into an equal record).

    Written directly from the validated fields (the hot path of every ingest): the same
    text as `generic_record_json`, which goes through pydantic's wire form."""
    cls = type(record)
    try:
        plan = _PLANS[cls]
    except KeyError:
        plan = _PLANS[cls] = _plan(cls)
    if plan is None:
        return generic_record_json(record)
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
            return generic_record_json(record)
    return "{" + ",".join(out) + "}"


def generic_record_json(record: UsageRecord) -> str:
    """The reference form of `record_json`: `json.dumps(wire form, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)` with instants in UTC and decimals plain."""
    data = record.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(record, GpuUsage):
        data["windowStart"] = instant(record.window_start)
        data["windowEnd"] = instant(record.window_end)
    else:
        data["timestamp"] = instant(record.timestamp)
        if isinstance(record, CustomUsage):  # the serializer keeps the caller's digits
            data["quantity"] = plain(record.quantity)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
