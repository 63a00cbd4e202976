"""The events API served on a real 127.0.0.1 port over a real ledger (SQLite and
PostgreSQL), driven by real HTTP requests from several threads."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.events_api import EventsApiConfig, StaticTokenStore, create_app
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

from support.postgres import ledger_url, postgres_url  # noqa: F401  (fixtures)

if TYPE_CHECKING:
    from conftest import ServeApi, ServedApi

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PERIOD = Period(2026, 11)
TOKENS = {"acme": "acme-token-0123456789abcdef", "globex": "globex-token-0123456789abcdef"}


def request(
    url: str, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def event(i: int, tokens: int = 10) -> dict[str, Any]:
    return {
        "id": f"req-{i:06d}",
        "kind": "tokens",
        "model": "m",
        "completionTokens": tokens,
        "timestamp": "2026-11-15T11:00:00Z",
    }


@pytest.fixture
def ledger(ledger_url: str, completion_plan: PricePlanSpec) -> Iterator[Ledger]:  # noqa: F811
    led = Ledger.open(ledger_url)
    for tenant in TOKENS:
        led.set_terms(tenant, PERIOD, completion_plan)
    yield led
    led.close()


@pytest.fixture
def served(ledger: Ledger, serve_api: ServeApi) -> ServedApi:
    app = create_app(
        ledger,
        StaticTokenStore(TOKENS),
        config=EventsApiConfig(max_body_bytes=256 * 1024),
        clock=lambda: NOW,
    )
    return serve_api(app)


def completion_tokens(ledger: Ledger, tenant: str) -> int:
    return sum(q.completion_tokens for q in ledger.period_totals(tenant, PERIOD).values())


def test_post_then_read_usage_over_http(served: ServedApi, ledger: Ledger) -> None:
    status, body = request(
        f"{served.url}/v1/events", "POST", [event(i) for i in range(50)], TOKENS["acme"]
    )
    assert (status, body) == (202, {"accepted": 50, "duplicates": 0})
    status, statement = request(f"{served.url}/v1/tenants/acme/usage", token=TOKENS["acme"])
    assert status == 200
    assert statement["total"] == "0.50"
    assert statement["lines"][0]["quantity"] == "500"
    assert request(f"{served.url}/v1/tenants/acme/usage", token=TOKENS["globex"])[0] == 403
    assert request(f"{served.url}/healthz") == (200, {"status": "ok"})


def test_rejections_over_http_write_nothing(served: ServedApi, ledger: Ledger) -> None:
    url = f"{served.url}/v1/events"
    assert request(url, "POST", [event(1)])[0] == 401
    assert request(url, "POST", [event(1)], "nope")[0] == 401
    status, err = request(url, "POST", [{**event(1), "tenant": "globex"}], TOKENS["acme"])
    assert (status, err["field"]) == (403, "events[0].tenant")
    status, err = request(
        url, "POST", [event(1), {**event(2), "completionTokens": -5}], TOKENS["acme"]
    )
    assert (status, err["field"]) == (400, "events[1].completionTokens")
    assert completion_tokens(ledger, "acme") == 0
    assert request(url, "POST", [event(1)], TOKENS["acme"])[0] == 202
    status, err = request(url, "POST", [event(2), event(1, tokens=11)], TOKENS["acme"])
    assert (status, err["id"]) == (409, "req-000001")
    assert completion_tokens(ledger, "acme") == 10


def test_oversized_body_is_refused_before_it_is_sent(served: ServedApi, ledger: Ledger) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/events")
        conn.putheader("Authorization", f"Bearer {TOKENS['acme']}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(100 * 1024 * 1024))
        conn.endheaders()
        conn.send(b"[")  # 1 byte of the announced 100 MiB: the answer must not wait
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["maxBodyBytes"] == 256 * 1024
    finally:
        conn.close()
    assert completion_tokens(ledger, "acme") == 0


def test_concurrent_duplicate_posts_count_each_event_once(
    served: ServedApi, ledger: Ledger
) -> None:
    batch = [event(i, tokens=i + 1) for i in range(200)]
    url = f"{served.url}/v1/events"
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: request(url, "POST", batch, TOKENS["acme"]), range(16)))
    assert all(status == 202 for status, _ in results), results
    assert sum(body["accepted"] for _, body in results) == 200
    assert sum(body["duplicates"] for _, body in results) == 200 * 15
    assert completion_tokens(ledger, "acme") == sum(range(1, 201))
