"""The events API in-process (aiohttp's test server) over a real SQLite ledger: every
response code, nothing partially written, one tenant's token cannot touch another's usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.errors import TransientError
from kubemeter_operator.events_api import EventsApiConfig, StaticTokenStore, create_app
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.ledger.engine import make_engine
from kubemeter_operator.rating.statement import Statement
from kubemeter_operator.usage.periods import Period

T = TypeVar("T")

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PERIOD = Period(2026, 11)
TOKENS = {"acme": "acme-secret-token-0123456789", "globex": "globex-secret-token-9876543210"}

PLAN = PricePlanSpec.model_validate(
    {
        "currency": "USD",
        "platformFee": "10.00",
        "meters": [
            {
                "name": "prompt",
                "kind": "promptTokens",
                "unit": "1k-tokens",
                "pricing": {"model": "flat", "unitPrice": "0.50"},
            },
            {
                "name": "completion",
                "kind": "completionTokens",
                "unit": "1k-tokens",
                "pricing": {"model": "flat", "unitPrice": "1.50"},
            },
            {
                "name": "steps",
                "kind": "agentSteps",
                "unit": "step",
                "pricing": {"model": "flat", "unitPrice": "0.01"},
            },
        ],
    }
)


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


def token_event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"evt-{i}",
        "kind": "tokens",
        "model": "llama-3-70b",
        "promptTokens": 1000,
        "completionTokens": 500,
        "timestamp": "2026-11-15T10:00:00Z",
        **extra,
    }


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    for tenant in TOKENS:
        led.set_terms(tenant, PERIOD, PLAN)
    yield led
    led.close()


@pytest.fixture
def tokens() -> StaticTokenStore:
    return StaticTokenStore(TOKENS)


Scenario = Callable[[TestClient[web.Request, web.Application]], Awaitable[T]]


class Runner:
    """`runner(scenario)` serves `app` in-process and runs `scenario(client)`."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self.make_app = make_app

    def __call__(self, scenario: Scenario[T]) -> T:
        async def main() -> T:
            async with TestClient(TestServer(self.make_app())) as client:
                return await scenario(client)

        return asyncio.run(main())


@pytest.fixture
def make_runner() -> Callable[..., Runner]:
    def make(
        ledger: Any,
        tokens: Any,
        tenants: Any = None,
        config: EventsApiConfig | None = None,
    ) -> Runner:
        return Runner(lambda: create_app(ledger, tokens, tenants, config=config, clock=lambda: NOW))

    return make


@pytest.fixture
def api(ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]) -> Runner:
    return make_runner(ledger, tokens)


Client = TestClient[web.Request, web.Application]


def totals_of(ledger: Ledger, tenant: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, qty in ledger.period_totals(tenant, PERIOD).items():
        out[f"{key.kind}:{key.model}"] = qty.prompt_tokens + qty.completion_tokens + qty.steps
    return out


# -- 202 and idempotency -----------------------------------------------------------------


def test_post_a_list_is_accepted_and_recorded(api: Runner, ledger: Ledger) -> None:
    async def scenario(client: Client) -> tuple[int, Any]:
        r = await client.post(
            "/v1/events", json=[token_event(1), token_event(2)], headers=auth("acme")
        )
        return r.status, await r.json()

    assert api(scenario) == (202, {"accepted": 2, "duplicates": 0})
    assert totals_of(ledger, "acme") == {"tokens:llama-3-70b": 3000}
    assert totals_of(ledger, "globex") == {}


def test_envelope_form_and_resending_counts_duplicates(api: Runner, ledger: Ledger) -> None:
    batch = {"events": [token_event(1), token_event(2, tenant="acme")]}

    async def scenario(client: Client) -> list[Any]:
        out = []
        for _ in range(2):
            r = await client.post("/v1/events", json=batch, headers=auth("acme"))
            out.append((r.status, await r.json()))
        return out

    assert api(scenario) == [
        (202, {"accepted": 2, "duplicates": 0}),
        (202, {"accepted": 0, "duplicates": 2}),
    ]
    assert totals_of(ledger, "acme") == {"tokens:llama-3-70b": 3000}


def test_tenant_field_present_or_absent_is_the_same_payload(api: Runner) -> None:
    async def scenario(client: Client) -> list[Any]:
        a = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        b = await client.post(
            "/v1/events", json=[token_event(1, tenant="acme")], headers=auth("acme")
        )
        return [await a.json(), await b.json()]

    assert api(scenario) == [{"accepted": 1, "duplicates": 0}, {"accepted": 0, "duplicates": 1}]


def test_same_id_twice_in_a_batch_with_same_payload_is_one_event(api: Runner) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1)] * 2, headers=auth("acme"))
        return r.status, await r.json()

    assert api(scenario) == (202, {"accepted": 1, "duplicates": 1})


def test_empty_batch(api: Runner) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[], headers=auth("acme"))
        return r.status, await r.json()

    assert api(scenario) == (202, {"accepted": 0, "duplicates": 0})


# -- 400 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b"[{", "body", "malformed JSON"),
        (b"\xff\xfe", "body", ""),
        (b"[NaN]", "body", "NaN"),
        (b'{"evnts": []}', "evnts", "unknown field"),
        (b'"hello"', "events", "JSON list"),
        (b'{"events": 3}', "events", "JSON list"),
    ],
    ids=["truncated", "not-utf8", "nan", "unknown-key", "string", "events-not-list"],
)
def test_malformed_body_is_400_naming_the_body(
    api: Runner, ledger: Ledger, body: bytes, field: str, fragment: str
) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.post(
            "/v1/events",
            data=body,
            headers={**auth("acme"), "Content-Type": "application/json"},
        )
        return r.status, await r.json()

    status, err = api(scenario)
    assert status == 400
    assert err["field"] == field
    assert fragment in err["error"]
    assert totals_of(ledger, "acme") == {}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"promptTokens": -1}, "events[3].promptTokens"),
        ({"promptTokens": "12"}, "events[3].promptTokens"),
        ({"promptTokens": 1.5}, "events[3].promptTokens"),
        ({"cachedPromptTokens": 5000}, "events[3].cachedPromptTokens"),
        ({"kind": "bananas"}, "events[3].kind"),
        ({"timestamp": "2026-11-15T10:00:00"}, "events[3].timestamp"),
        ({"colour": "red"}, "events[3].colour"),
        ({"id": "has spaces"}, "events[3].id"),
        ({"id": None}, "events[3].id"),
    ],
    ids=lambda v: str(v),
)
def test_invalid_record_is_400_naming_the_field_and_writes_nothing(
    api: Runner, ledger: Ledger, bad: dict[str, Any], field: str
) -> None:
    batch = [token_event(i) for i in range(5)]
    batch[3] = {**batch[3], **bad}

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=batch, headers=auth("acme"))
        return r.status, await r.json()

    status, err = api(scenario)
    assert status == 400, err
    assert err["field"] == field
    assert err["error"].startswith(field)
    assert totals_of(ledger, "acme") == {}


def test_missing_id_is_400_even_though_quote_files_allow_it(api: Runner, ledger: Ledger) -> None:
    event = token_event(0)
    del event["id"]

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1), event], headers=auth("acme"))
        return r.status, await r.json()

    status, err = api(scenario)
    assert (status, err["field"]) == (400, "events[1].id")
    assert "required" in err["error"]
    assert totals_of(ledger, "acme") == {}


def test_every_bad_field_is_listed_in_details(api: Runner) -> None:
    batch = [token_event(0, promptTokens=-1), token_event(1), token_event(2, steps=3)]

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=batch, headers=auth("acme"))
        return await r.json()

    err = api(scenario)
    assert [d["field"] for d in err["details"]] == ["events[0].promptTokens", "events[2].steps"]


# -- 401 / 403 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKENS['acme']}"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_missing_or_invalid_token_is_401(
    api: Runner, ledger: Ledger, headers: dict[str, str]
) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1)], headers=headers)
        u = await client.get("/v1/tenants/acme/usage", headers=headers)
        return r.status, r.headers.get("WWW-Authenticate", ""), u.status

    status, challenge, usage_status = api(scenario)
    assert (status, usage_status) == (401, 401)
    assert challenge.startswith("Bearer")
    assert totals_of(ledger, "acme") == {}


def test_token_of_a_deleted_tenant_is_refused(
    ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(ledger, tokens, lambda: {})

    async def scenario(client: Client) -> int:
        r = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        return r.status

    assert api(scenario) == 401


def test_token_of_one_tenant_cannot_write_another_tenants_usage(
    api: Runner, ledger: Ledger
) -> None:
    batch = [token_event(1), token_event(2, tenant="globex")]

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=batch, headers=auth("acme"))
        return r.status, await r.json()

    status, err = api(scenario)
    assert (status, err["field"]) == (403, "events[1].tenant")
    assert totals_of(ledger, "acme") == {}
    assert totals_of(ledger, "globex") == {}


def test_token_of_one_tenant_cannot_read_another_tenants_usage(api: Runner) -> None:
    async def scenario(client: Client) -> tuple[int, int]:
        own = await client.get("/v1/tenants/acme/usage", headers=auth("acme"))
        other = await client.get("/v1/tenants/globex/usage", headers=auth("acme"))
        return own.status, other.status

    assert api(scenario) == (200, 403)


# -- 409 ---------------------------------------------------------------------------------


def test_reused_id_with_a_different_payload_is_409_and_the_batch_writes_nothing(
    api: Runner, ledger: Ledger
) -> None:
    async def scenario(client: Client) -> Any:
        first = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        assert first.status == 202
        r = await client.post(
            "/v1/events",
            json=[token_event(2), token_event(1, promptTokens=7)],
            headers=auth("acme"),
        )
        return r.status, await r.json()

    status, err = api(scenario)
    assert status == 409
    assert (err["field"], err["id"]) == ("events[1].id", "evt-1")
    assert "evt-1" in err["error"]
    assert totals_of(ledger, "acme") == {"tokens:llama-3-70b": 1500}  # evt-2 not written


def test_the_same_id_in_two_tenants_is_two_events(api: Runner, ledger: Ledger) -> None:
    """Event ids are the tenant's own: globex's `evt-1` is not acme's."""

    async def scenario(client: Client) -> Any:
        a = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        g = await client.post("/v1/events", json=[token_event(1)], headers=auth("globex"))
        again = await client.post("/v1/events", json=[token_event(1)], headers=auth("globex"))
        return a.status, await a.json(), g.status, await g.json(), await again.json()

    a_status, a_body, g_status, g_body, again = api(scenario)
    assert (a_status, g_status) == (202, 202)
    assert a_body == g_body == {"accepted": 1, "duplicates": 0}
    assert again == {"accepted": 0, "duplicates": 1}
    assert totals_of(ledger, "globex") == totals_of(ledger, "acme") != {}


def test_same_id_twice_in_a_batch_with_different_payloads_is_409(
    api: Runner, ledger: Ledger
) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.post(
            "/v1/events",
            json=[token_event(1), token_event(1, promptTokens=7)],
            headers=auth("acme"),
        )
        return r.status, await r.json()

    status, err = api(scenario)
    assert (status, err["field"]) == (409, "events[1].id")
    assert totals_of(ledger, "acme") == {}


# -- 413 ---------------------------------------------------------------------------------


def test_too_many_events_is_413(
    ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(ledger, tokens, config=EventsApiConfig(max_events=3))

    async def scenario(client: Client) -> Any:
        ok = await client.post(
            "/v1/events", json=[token_event(i) for i in range(3)], headers=auth("acme")
        )
        r = await client.post(
            "/v1/events", json=[token_event(i) for i in range(10, 14)], headers=auth("acme")
        )
        return ok.status, r.status, await r.json()

    ok, status, err = api(scenario)
    assert (ok, status, err["maxEvents"]) == (202, 413, 3)
    assert totals_of(ledger, "acme") == {"tokens:llama-3-70b": 4500}


def test_default_limits() -> None:
    config = EventsApiConfig()
    assert (config.max_events, config.max_body_bytes) == (1000, 1 << 20)


def test_oversized_body_is_413_before_it_is_read_or_parsed(
    ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(ledger, tokens, config=EventsApiConfig(max_body_bytes=1000))
    # Not even JSON: a parser would say 400; the size check must answer first.
    body = b"x" * 5000

    async def scenario(client: Client) -> Any:
        r = await client.post(
            "/v1/events",
            data=body,
            headers={**auth("acme"), "Content-Type": "application/json"},
        )
        return r.status, await r.json()

    status, err = api(scenario)
    assert (status, err["field"], err["maxBodyBytes"]) == (413, "body", 1000)


def test_oversized_chunked_body_is_413(
    ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(ledger, tokens, config=EventsApiConfig(max_body_bytes=1000))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"[" * 500

    async def scenario(client: Client) -> int:
        r = await client.post("/v1/events", data=chunks(), headers=auth("acme"))
        return r.status

    assert api(scenario) == 413


def test_body_size_is_checked_after_authentication(
    ledger: Ledger, tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(ledger, tokens, config=EventsApiConfig(max_body_bytes=10))

    async def scenario(client: Client) -> int:
        r = await client.post("/v1/events", data=b"x" * 100)
        return r.status

    assert api(scenario) == 401


# -- 503 ---------------------------------------------------------------------------------


class DownLedger:
    """A ledger whose database is down."""

    def record_events(self, tenant: str, records: Any) -> Any:
        raise TransientError("ledger record events: database unavailable")

    def get_terms(self, tenant: str, period: Period) -> Any:
        raise TransientError("ledger get terms: database unavailable")

    def period_totals(self, tenant: str, period: Period) -> Any:
        raise TransientError("ledger period totals: database unavailable")

    def get_statement(self, tenant: str, period: Period) -> Any:
        raise TransientError("ledger get statement: database unavailable")

    def wallet(self, tenant: str) -> Any:
        raise TransientError("ledger wallet balance: database unavailable")


def test_ledger_outage_is_503_with_retry_after(
    tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    api = make_runner(DownLedger(), tokens, config=EventsApiConfig(retry_after_s=7))

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        u = await client.get("/v1/tenants/acme/usage", headers=auth("acme"))
        return r.status, r.headers.get("Retry-After"), u.status, u.headers.get("Retry-After")

    assert api(scenario) == (503, "7", 503, "7")


def test_real_database_outage_is_503(
    tokens: StaticTokenStore, make_runner: Callable[..., Runner]
) -> None:
    # A PostgreSQL ledger whose server is not there (nothing listens on port 1).
    ledger = Ledger(make_engine("postgresql+psycopg://kubemeter@127.0.0.1:1/ledger"))
    api = make_runner(ledger, tokens)

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        return r.status, r.headers.get("Retry-After"), await r.json()

    try:
        status, retry_after, err = api(scenario)
    finally:
        ledger.close()
    assert (status, retry_after) == (503, "5")
    assert "retry" in err["error"]


class NotReadyTokens:
    async def authenticate(self, token: str) -> str | None:
        raise TransientError("API tokens are not loaded yet")


def test_token_store_not_ready_is_503(ledger: Ledger, make_runner: Callable[..., Runner]) -> None:
    api = make_runner(ledger, NotReadyTokens())

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1)], headers=auth("acme"))
        return r.status, "Retry-After" in r.headers

    assert api(scenario) == (503, True)


# -- usage and health --------------------------------------------------------------------


def test_usage_returns_the_live_statement(api: Runner) -> None:
    async def scenario(client: Client) -> Any:
        await client.post(
            "/v1/events",
            json=[
                token_event(1),
                {"id": "s1", "kind": "steps", "steps": 250, "timestamp": "2026-11-02T00:00:00Z"},
            ],
            headers=auth("acme"),
        )
        r = await client.get("/v1/tenants/acme/usage", headers=auth("acme"))
        return r.status, r.headers.get("Cache-Control"), await r.json()

    status, cache, body = api(scenario)
    assert (status, cache) == (200, "no-store")
    statement = Statement.model_validate(body)
    assert statement.period == "2026-11"
    # 10.00 fee + 1k prompt × 0.50 + 0.5k completion × 1.50 + 250 steps × 0.01
    assert statement.total == Decimal("13.75")


def test_usage_of_another_period_and_bad_period(api: Runner) -> None:
    async def scenario(client: Client) -> Any:
        other = await client.get(
            "/v1/tenants/acme/usage", params={"period": "2026-10"}, headers=auth("acme")
        )
        bad = await client.get(
            "/v1/tenants/acme/usage", params={"period": "2026-13"}, headers=auth("acme")
        )
        return other.status, bad.status, (await bad.json())["field"]

    # no terms were recorded for October: nothing to show
    assert api(scenario) == (404, 400, "period")


def test_healthz(api: Runner) -> None:
    async def scenario(client: Client) -> Any:
        r = await client.get("/healthz")
        return r.status, await r.json()

    assert api(scenario) == (200, {"status": "ok"})


def test_a_value_the_ledger_cannot_store_exactly_is_400_naming_the_field(
    api: Runner, ledger: Ledger
) -> None:
    custom = {
        "id": "c1",
        "kind": "custom",
        "name": "credits",
        "quantity": "1." + "1" * 30,
        "timestamp": "2026-11-15T10:00:00Z",
    }

    async def scenario(client: Client) -> Any:
        r = await client.post("/v1/events", json=[token_event(1), custom], headers=auth("acme"))
        return r.status, await r.json()

    status, err = api(scenario)
    assert (status, err["field"]) == (400, "events[1].quantity")
    assert "decimal places" in err["error"]
    assert totals_of(ledger, "acme") == {}
