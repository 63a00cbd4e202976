"""The events API refuses usage outside its clock window (422 naming the field), numbers it
cannot hold (400 naming the field, never a 500), and periods outside the billable years; a
refused batch never reaches the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import USAGE_LIST, UsageRecord
from kubemeter_operator.events_api import EventsApiConfig, StaticTokenStore, create_app
from kubemeter_operator.events_api.validation import ApiError, check_times, duration_text
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PERIOD = Period(2026, 11)
TOKEN = "acme-secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = PricePlanSpec.model_validate(
    {
        "currency": "USD",
        "meters": [
            {
                "name": "prompt",
                "kind": "promptTokens",
                "unit": "token",
                "pricing": {"model": "flat", "unitPrice": "0.001"},
            }
        ],
    }
)
FUTURE, BACKDATE = timedelta(minutes=5), timedelta(days=35)


def tokens(i: int, at: datetime | str, **extra: Any) -> dict[str, Any]:
    stamp = at if isinstance(at, str) else at.isoformat()
    return {"id": f"evt-{i}", "kind": "tokens", "model": "m", "promptTokens": 10,
            "timestamp": stamp, **extra}  # fmt: skip


def gpu(i: int, start: datetime, end: datetime) -> dict[str, Any]:
    return {"id": f"gpu-{i}", "kind": "gpu", "model": "H100", "allocatedMs": 1000,
            "windowStart": start.isoformat(), "windowEnd": end.isoformat()}  # fmt: skip


def records(*items: dict[str, Any]) -> list[UsageRecord]:
    return USAGE_LIST.validate_python(list(items))


def refusal(batch: Sequence[UsageRecord]) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_times(batch, now=NOW, max_future=FUTURE, max_backdate=BACKDATE)
    return info.value


# -- the pure check ----------------------------------------------------------------------


def test_instants_up_to_the_limits_themselves_are_accepted() -> None:
    batch = records(
        tokens(0, NOW + FUTURE),
        tokens(1, NOW - BACKDATE),
        tokens(2, NOW),
        gpu(3, NOW - BACKDATE, NOW + FUTURE),
    )
    check_times(batch, now=NOW, max_future=FUTURE, max_backdate=BACKDATE)


def test_a_timestamp_beyond_max_future_is_422_naming_the_field() -> None:
    batch = records(*(tokens(i, NOW) for i in range(3)), tokens(3, "2026-12-31T00:00:00Z"))
    err = refusal(batch)
    assert err.status == 422
    assert err.field == "events[3].timestamp"
    assert err.message == (
        "events[3].timestamp: 2026-12-31T00:00:00Z is more than 5 minutes in the future"
    )


def test_one_microsecond_past_the_future_limit_is_refused() -> None:
    err = refusal(records(tokens(0, NOW + FUTURE + timedelta(microseconds=1))))
    assert err.field == "events[0].timestamp"


def test_a_timestamp_older_than_the_backdating_limit_is_422_naming_the_field() -> None:
    err = refusal(records(tokens(0, NOW), tokens(1, NOW - BACKDATE - timedelta(seconds=1))))
    assert (err.status, err.field) == (422, "events[1].timestamp")
    assert err.message == (
        "events[1].timestamp: 2026-10-11T11:59:59Z is older than the backdating limit of 35 days"
    )


def test_the_instant_is_reported_in_utc_whatever_its_offset() -> None:
    err = refusal(records(tokens(0, "2026-11-15T18:00:00+05:00")))  # 13:00Z: 1 h ahead
    assert err.message.startswith("events[0].timestamp: 2026-11-15T13:00:00Z is more than")


def test_gpu_windows_are_checked_at_both_ends() -> None:
    start_too_old = refusal(records(gpu(0, NOW - BACKDATE - timedelta(hours=1), NOW)))
    assert start_too_old.field == "events[0].windowStart"
    end_ahead = refusal(records(gpu(0, NOW - timedelta(hours=1), NOW + timedelta(hours=1))))
    assert end_ahead.field == "events[0].windowEnd"
    assert "more than 5 minutes in the future" in end_ahead.message


def test_every_refused_instant_is_listed_in_details() -> None:
    err = refusal(
        records(
            tokens(0, NOW + timedelta(days=1)),
            tokens(1, NOW),
            gpu(2, NOW + timedelta(hours=1), NOW + timedelta(hours=2)),
        )
    )
    assert [d["field"] for d in err.details] == [
        "events[0].timestamp",
        "events[2].windowStart",
        "events[2].windowEnd",
    ]
    assert err.body()["status"] == 422


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(minutes=5), "5 minutes"),
        (timedelta(days=35), "35 days"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(seconds=90), "90 seconds"),
        (timedelta(days=1), "1 day"),
        (timedelta(milliseconds=1500), "0:00:01.500000"),
    ],
)
def test_limits_are_written_in_words(span: timedelta, text: str) -> None:
    assert duration_text(span) == text


# -- through the app ---------------------------------------------------------------------


class SpyLedger:
    """A real SQLite ledger that counts the batches handed to it."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.batches = 0

    def record_events(self, tenant: str, batch: Sequence[UsageRecord]) -> Any:
        self.batches += 1
        return self.ledger.record_events(tenant, batch)

    def get_terms(self, tenant: str, period: Period) -> Any:
        return self.ledger.get_terms(tenant, period)

    def period_totals(self, tenant: str, period: Period) -> Any:
        return self.ledger.period_totals(tenant, period)

    def get_statement(self, tenant: str, period: Period) -> str | None:
        return self.ledger.get_statement(tenant, period)

    def wallet(self, tenant: str) -> Any:
        return self.ledger.wallet(tenant)


@pytest.fixture
def spy(tmp_path: Path) -> Iterator[SpyLedger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.set_terms("acme", PERIOD, PLAN)
    yield SpyLedger(led)
    led.close()


def call(
    spy: SpyLedger,
    method: str,
    path: str,
    *,
    config: EventsApiConfig | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    async def main() -> tuple[int, Any]:
        app: web.Application = create_app(
            spy, StaticTokenStore({"acme": TOKEN}), config=config, clock=lambda: NOW
        )
        async with TestClient(TestServer(app)) as client:
            r = await client.request(method, path, headers=AUTH, **kwargs)
            return r.status, await r.json()

    return asyncio.run(main())


def prompt_tokens(spy: SpyLedger) -> int:
    return sum(q.prompt_tokens for q in spy.ledger.period_totals("acme", PERIOD).values())


def test_api_refuses_a_future_event_with_422_and_records_nothing_of_the_batch(
    spy: SpyLedger,
) -> None:
    batch = [*(tokens(i, NOW) for i in range(3)), tokens(3, "2026-12-31T00:00:00Z")]
    status, body = call(spy, "POST", "/v1/events", json=batch)
    assert status == 422
    assert body["field"] == "events[3].timestamp"
    assert body["error"] == (
        "events[3].timestamp: 2026-12-31T00:00:00Z is more than 5 minutes in the future"
    )
    assert body["details"] == [
        {
            "field": "events[3].timestamp",
            "problem": "2026-12-31T00:00:00Z is more than 5 minutes in the future",
        }
    ]
    assert spy.batches == 0
    assert prompt_tokens(spy) == 0


def test_api_refuses_usage_older_than_the_backdating_limit(spy: SpyLedger) -> None:
    batch = [tokens(0, NOW), tokens(1, "2026-10-01T00:00:00Z")]
    status, body = call(spy, "POST", "/v1/events", json=batch)
    assert (status, body["field"]) == (422, "events[1].timestamp")
    assert body["error"].endswith("is older than the backdating limit of 35 days")
    assert spy.batches == 0


def test_api_uses_the_configured_limits_and_its_own_clock(spy: SpyLedger) -> None:
    config = EventsApiConfig(max_future=timedelta(hours=1), max_backdate=timedelta(days=1))
    ahead = tokens(0, NOW + timedelta(minutes=30))
    assert call(spy, "POST", "/v1/events", json=[ahead], config=config)[0] == 202
    old = tokens(1, NOW - timedelta(days=2))
    status, body = call(spy, "POST", "/v1/events", json=[old], config=config)
    assert (status, body["field"]) == (422, "events[0].timestamp")
    assert "backdating limit of 1 day" in body["error"]
    assert prompt_tokens(spy) == 10


def test_api_refuses_a_gpu_window_ending_in_the_future(spy: SpyLedger) -> None:
    window = gpu(0, NOW - timedelta(minutes=1), NOW + timedelta(minutes=10))
    status, body = call(spy, "POST", "/v1/events", json=[window])
    assert (status, body["field"]) == (422, "events[0].windowEnd")
    assert spy.batches == 0


@pytest.mark.parametrize(
    ("field", "digits"),
    [("promptTokens", 5000), ("completionTokens", 4301), ("promptTokens", 41)],
)
def test_a_giant_integer_is_400_naming_the_field_not_500(
    spy: SpyLedger, field: str, digits: int
) -> None:
    body = (
        '[{"id": "e1", "kind": "tokens", "model": "m", "timestamp": "2026-11-15T10:00:00Z", '
        f'"{field}": {"7" * digits}}}]'
    ).encode()
    status, err = call(spy, "POST", "/v1/events", data=body)
    assert status == 400, err
    assert err["field"] == f"events[0].{field}"
    assert err["error"].startswith(f"events[0].{field}: an integer of {digits} digits")
    assert "too large" in err["error"]
    assert spy.batches == 0


def test_a_count_above_the_bound_is_400_naming_the_field(spy: SpyLedger) -> None:
    status, err = call(spy, "POST", "/v1/events", json=[tokens(0, NOW, promptTokens=10**15 + 1)])
    assert (status, err["field"]) == (400, "events[0].promptTokens")
    assert spy.batches == 0


def test_a_giant_custom_quantity_is_400_naming_the_field(spy: SpyLedger) -> None:
    body = (
        '[{"id": "c1", "kind": "custom", "name": "credits", '
        f'"timestamp": "2026-11-15T10:00:00Z", "quantity": {"9" * 5000}}}]'
    ).encode()
    status, err = call(spy, "POST", "/v1/events", data=body)
    assert (status, err["field"]) == (400, "events[0].quantity")
    assert "too large" in err["error"]


def test_a_timestamp_outside_the_billable_years_is_400_naming_the_field(spy: SpyLedger) -> None:
    batch = [tokens(0, "9999-12-31T23:00:00-05:00")]  # the year 10000 in UTC
    status, err = call(spy, "POST", "/v1/events", json=batch)
    assert (status, err["field"]) == (400, "events[0].timestamp")
    assert "outside the years 1970..9998" in err["error"]


def test_ids_in_one_batch_compare_by_canonical_payload(spy: SpyLedger) -> None:
    same_instant = [tokens(0, "2026-11-15T10:00:00Z"), tokens(0, "2026-11-15T11:00:00+01:00")]
    status, body = call(spy, "POST", "/v1/events", json=same_instant)
    assert (status, body) == (202, {"accepted": 1, "duplicates": 1})


@pytest.mark.parametrize("period", ["0000-01", "9999-12", "1969-12"])
def test_usage_of_a_period_outside_the_billable_years_is_400_naming_period(
    spy: SpyLedger, period: str
) -> None:
    status, err = call(spy, "GET", "/v1/tenants/acme/usage", params={"period": period})
    assert (status, err["field"]) == (400, "period")
    assert err["error"] == f"period: {period!r} is outside the years 1970..9998"


@pytest.mark.parametrize(
    ("stamp", "why"),
    [("0000-06-01T00:00:00Z", ""), ("9999-06-01T00:00:00Z", "outside the years 1970..9998")],
)
def test_timestamps_in_the_years_0_and_9999_are_400_naming_the_field(
    spy: SpyLedger, stamp: str, why: str
) -> None:
    status, err = call(spy, "POST", "/v1/events", json=[tokens(0, stamp)])
    assert (status, err["field"]) == (400, "events[0].timestamp")
    assert why in err["error"]
    assert spy.batches == 0


def test_a_quantity_of_2_to_the_63_is_400_naming_the_field_not_a_500(spy: SpyLedger) -> None:
    status, err = call(spy, "POST", "/v1/events", json=[tokens(0, NOW, promptTokens=2**63)])
    assert (status, err["field"]) == (400, "events[0].promptTokens")
    assert spy.batches == 0
