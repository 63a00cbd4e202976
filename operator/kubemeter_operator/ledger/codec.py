"""Canonical payloads in the ledger: hashing them and parsing stored ones back.

The canonical form itself (what makes two submissions of the same key "the same": instants
in UTC, decimals without trailing zeros, sorted keys) is `usage.canonical`, the one
implementation shared with `kubemeter quote` and the events API; its names stay importable
from here. Two payloads are the same when their sha256 hashes (`digest`) are equal, so a
replay in another time zone offset or with ``"1.50"`` for ``"1.5"`` is still a replay.
"""

from __future__ import annotations

import hashlib

from pydantic import TypeAdapter

from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.usage.canonical import canonical_json as canonical_json
from kubemeter_operator.usage.canonical import generic_record_json
from kubemeter_operator.usage.canonical import instant as instant
from kubemeter_operator.usage.canonical import record_json as record_json

_record_json_generic = generic_record_json  # the reference form, under its former name

RECORD: TypeAdapter[UsageRecord] = TypeAdapter(UsageRecord)


def digest(*parts: str) -> str:
    """sha256 (hex) of the parts, each followed by a NUL byte."""
    return hashlib.sha256("\x00".join((*parts, "")).encode()).hexdigest()


def parse_record(payload: str) -> UsageRecord:
    return RECORD.validate_json(payload)
