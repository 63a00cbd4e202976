"""Parsing and checking an events batch. Pure: bytes in, records or an `ApiError` out.

Order of checks (the first that fails decides the response):
1. the body is JSON (400 `body`); integers of more than `MAX_INT_DIGITS` digits are never
   converted, so the field holding one refuses it in step 5;
2. it is a list of records or `{"events": [...]}` (400 `events`);
3. at most `max_events` records (413);
4. no record names another tenant (403 `events[i].tenant`);
5. every record is valid and has an `id` (400 naming each bad field, e.g.
   `events[3].promptTokens`), within the input bounds of `api.usage` (counts, years, digits);
6. an id used twice in the batch carries the same canonical payload both times (409 naming
   the id);
7. every instant lies within the API's clock window, `check_times` (422 naming the field,
   e.g. `events[3].timestamp`): not more than `max_future` ahead, not more than
   `max_backdate` behind.

Nothing here writes: a batch refused at any step leaves the ledger untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from pydantic import ValidationError

from kubemeter_operator.api.errors import validation_issues
from kubemeter_operator.api.usage import INPUT, USAGE_LIST, GpuUsage, UsageRecord, bounded_int
from kubemeter_operator.usage.canonical import instant, record_json

PREFIX = "events"
_INDEX_RE = re.compile(r"^events\[([0-9]+)\]")
MAX_REPORTED_ISSUES = 50


class ApiError(Exception):
    """An error response: status, message, the field it is about, details, headers.

    `close` asks for the connection to be closed after the response (the request body was
    not read to its end, e.g. a body timeout)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.close = close
        self.status = status
        self.message = message
        self.field = field
        self.details = details or []
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "error": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        out.update(self.extra)
        return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_int=bounded_int)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body: not UTF-8 ({exc.reason})", field="body") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"body: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field="body",
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"body: malformed JSON: {exc}", field="body") from exc


def batch_items(document: Any) -> list[Any]:
    """The records of a batch document: a JSON list, or an object {"events": [...]}."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        extra = sorted(k for k in document if k != PREFIX)
        if extra:
            raise ApiError(
                400, f"{extra[0]}: unknown field (expected only 'events')", field=extra[0]
            )
        if PREFIX not in document:
            raise ApiError(400, "events: required", field=PREFIX)
        items = document[PREFIX]
        if isinstance(items, list):
            return items
    raise ApiError(
        400,
        'events: the body must be a JSON list of usage records or {"events": [...]}',
        field=PREFIX,
    )


def _index_of(path: str) -> int:
    m = _INDEX_RE.match(path)
    return int(m.group(1)) if m else -1


def parse_batch(document: Any, *, tenant: str, max_events: int) -> list[UsageRecord]:
    """Validate a batch for `tenant`; records come back with `tenant` set to it.

    `document` is the parsed JSON; its records get `tenant` filled in where absent."""
    items = batch_items(document)
    if len(items) > max_events:
        raise ApiError(
            413,
            f"events: batch of {len(items)} events is larger than the limit of {max_events}",
            field=PREFIX,
            extra={"maxEvents": max_events},
        )
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            continue
        if "tenant" not in raw:
            raw["tenant"] = tenant  # records are stored under their owner, canonically
        elif raw["tenant"] != tenant:
            raise ApiError(
                403,
                f"events[{i}].tenant: {raw['tenant']!r} is not the authenticated tenant "
                f"{tenant!r}; a token may only report its own tenant's usage",
                field=f"events[{i}].tenant",
            )
    issues: list[tuple[str, str]] = [
        (f"events[{i}].id", "required: the events API is idempotent by event id")
        for i, raw in enumerate(items)
        if isinstance(raw, dict) and raw.get("id") is None
    ]
    records: list[UsageRecord] = []
    try:
        records = USAGE_LIST.validate_python(items, context=INPUT)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, PREFIX, data=items))
    if issues:
        issues.sort(key=lambda issue: _index_of(issue[0]))
        raise _issues_error(400, issues)
    _check_batch_ids(records)
    return records


def _issues_error(status: int, issues: Sequence[tuple[str, str]]) -> ApiError:
    """The error naming the first issue; every issue (up to a limit) in `details`."""
    path, problem = issues[0]
    return ApiError(
        status,
        f"{path}: {problem}" if path else problem,
        field=path,
        details=[{"field": p, "problem": m} for p, m in issues[:MAX_REPORTED_ISSUES]],
    )


def _instants(record: UsageRecord) -> tuple[tuple[str, datetime], ...]:
    if isinstance(record, GpuUsage):
        return (("windowStart", record.window_start), ("windowEnd", record.window_end))
    return (("timestamp", record.timestamp),)


def duration_text(span: timedelta) -> str:
    """`timedelta(minutes=5)` -> "5 minutes", `timedelta(days=1)` -> "1 day"."""
    seconds = span // timedelta(seconds=1)
    if span != timedelta(seconds=seconds) or seconds <= 0:
        return str(span)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def check_times(
    records: Sequence[UsageRecord],
    *,
    now: datetime,
    max_future: timedelta,
    max_backdate: timedelta,
) -> None:
    """Refuse (422) a batch with an instant more than `max_future` after `now` or more than
    `max_backdate` before it; the limits themselves are allowed. A GPU window is checked at
    both ends. The error names the first bad field, `details` all of them."""
    latest, earliest = now + max_future, now - max_backdate
    issues: list[tuple[str, str]] = []
    for i, record in enumerate(records):
        for name, at in _instants(record):
            if at > latest:
                problem = f"is more than {duration_text(max_future)} in the future"
            elif at < earliest:
                problem = f"is older than the backdating limit of {duration_text(max_backdate)}"
            else:
                continue
            issues.append((f"{PREFIX}[{i}].{name}", f"{instant(at)} {problem}"))
    if issues:
        raise _issues_error(422, issues)


def _check_batch_ids(records: Sequence[UsageRecord]) -> None:
    first_index: dict[str | None, int] = {}
    repeated = False
    for i, record in enumerate(records):
        repeated = record.id in first_index or repeated
        first_index.setdefault(record.id, i)
    if not repeated:
        return
    seen: dict[str, tuple[int, str]] = {}
    for i, record in enumerate(records):
        assert record.id is not None  # checked above
        payload = record_json(record)
        first = seen.setdefault(record.id, (i, payload))
        if first[1] != payload:
            raise ApiError(
                409,
                f"events[{i}].id: event id {record.id!r} is used twice in the batch "
                f"(events[{first[0]}] and events[{i}]) with different payloads",
                field=f"events[{i}].id",
                extra={"id": record.id},
            )
