"""The allowance for AI gateways, served on a real port over a real ledger (SQLite and
PostgreSQL): 200 with what is left, 402 Payment Required with the reason and Retry-After
once a scaleDown budget is spent or a prepaid wallet is empty, and the same answer as an
ext_authz-style check. Usage events are still accepted when a budget is spent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.events_api import StaticTokenStore, create_app
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

from support.postgres import ledger_url, postgres_url  # noqa: F401  (fixtures)

if TYPE_CHECKING:
    from conftest import ServeApi, ServedApi

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PERIOD = Period(2026, 11)
TO_DECEMBER_S = 15 * 86400 + 12 * 3600
TOKENS = {
    "acme": "acme-token-0123456789abcdef-allowance",
    "globex": "globex-token-0123456789abcdef-allowance",
    "wally": "wally-token-0123456789abcdef-allowance",
}
SPECS: dict[str, dict[str, Any]] = {
    "acme": {"budget": {"limit": "1.00", "enforcement": "scaleDown"}},
    "globex": {"budget": {"limit": "0.20", "enforcement": "alert", "alertThresholds": [50]}},
    "wally": {"wallet": {"enabled": True}},
}


def tenant(name: str) -> Tenant:
    return Tenant.model_validate({
        "metadata": {"name": name},
        "spec": {"pricePlanRef": {"name": "completion"}, "namespaces": [name], **SPECS[name]},
    })  # fmt: skip


def call(url: str, token: str | None, method: str = "GET", body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


@pytest.fixture
def ledger(ledger_url: str, completion_plan: PricePlanSpec) -> Iterator[Ledger]:  # noqa: F811
    led = Ledger.open(ledger_url)
    for name in TOKENS:
        led.set_terms(name, PERIOD, completion_plan)
    yield led
    led.close()


@pytest.fixture
def served(ledger: Ledger, serve_api: ServeApi) -> ServedApi:
    tenants = {name: tenant(name) for name in TOKENS}
    app = create_app(ledger, StaticTokenStore(TOKENS), lambda: tenants, clock=lambda: NOW)
    return serve_api(app)


def post_tokens(served: ServedApi, name: str, first: int, tokens: int) -> None:
    events = [{"id": f"req-{first}", "kind": "tokens", "model": "m",
               "completionTokens": tokens, "timestamp": "2026-11-15T11:00:00Z"}]  # fmt: skip
    status, _, body = call(f"{served.url}/v1/events", TOKENS[name], "POST", events)
    assert status == 202, body


def allowance(served: ServedApi, name: str) -> tuple[int, dict[str, str], Any]:
    return call(f"{served.url}/v1/tenants/{name}/allowance", TOKENS[name])


def test_a_spent_scale_down_budget_is_402_until_the_period_resets(served: ServedApi) -> None:
    post_tokens(served, "acme", 1, 500)  # 0.50 of 1.00
    status, headers, body = allowance(served, "acme")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert body == {
        "tenant": "acme", "allowed": True, "phase": "Active", "period": "2026-11",
        "currency": "USD", "limit": "1.00", "spent": "0.50", "remaining": "0.50",
        "walletBalance": None, "resetsAt": "2026-12-01T00:00:00Z",
        "reason": "within budget: spent 0.50 of 1.00",
    }  # fmt: skip
    post_tokens(served, "acme", 2, 600)  # usage is never refused: it happened
    status, headers, body = allowance(served, "acme")
    assert status == 402
    assert int(headers["Retry-After"]) == TO_DECEMBER_S
    assert body["status"] == 402
    assert body["refusedFor"] == "budgetExceeded"
    assert (body["limit"], body["spent"], body["remaining"]) == ("1.00", "1.10", "-0.10")
    assert body["phase"] == "Suspended"
    assert body["resetsAt"] == "2026-12-01T00:00:00Z"
    assert "acme" in body["error"]
    assert "spent 1.10 of 1.00" in body["error"]


def test_authorize_is_an_ext_authz_check_with_any_method_and_path(served: ServedApi) -> None:
    post_tokens(served, "acme", 1, 1000)  # exactly the limit: spent
    post_tokens(served, "globex", 1, 300)  # over an alert-only budget: still allowed
    for method, path in (("POST", "/v1/authorize"), ("GET", "/v1/authorize/v1/models"),
                         ("POST", "/v1/authorize/v1/chat/completions")):  # fmt: skip
        status, headers, body = call(f"{served.url}{path}", TOKENS["acme"], method)
        assert (status, body["refusedFor"]) == (402, "budgetExceeded"), (method, path)
        assert int(headers["Retry-After"]) == TO_DECEMBER_S
        status, _, body = call(f"{served.url}{path}", TOKENS["globex"], method)
        assert status == 200, (method, path, body)
        assert (body["allowed"], body["phase"], body["remaining"]) == (True, "Warning", "-0.10")
    assert call(f"{served.url}/v1/authorize", None, "POST")[0] == 401
    assert call(f"{served.url}/v1/authorize", "not-a-token", "POST")[0] == 401


def test_an_empty_wallet_is_402_until_a_top_up(served: ServedApi, ledger: Ledger) -> None:
    ledger.topup("wally", Decimal("0.05"), "USD", "first")
    status, _, body = allowance(served, "wally")
    assert (status, body["walletBalance"], body["limit"]) == (200, "0.05", None)
    post_tokens(served, "wally", 1, 100)  # 0.10 due
    ledger.settle("wally", PERIOD, Decimal("0.10"), "USD")  # the operator's bill step
    status, headers, body = allowance(served, "wally")
    assert status == 402
    assert headers["Retry-After"] == "60"
    assert (body["refusedFor"], body["walletBalance"]) == ("walletEmpty", "0")
    assert "0.05 unpaid" in body["error"]
    ledger.topup("wally", Decimal("1.00"), "USD", "second")
    status, _, body = allowance(served, "wally")
    assert (status, body["allowed"]) == (200, True)


def test_a_token_reads_only_its_own_allowance(served: ServedApi) -> None:
    status, _, body = call(f"{served.url}/v1/tenants/globex/allowance", TOKENS["acme"])
    assert status == 403
    assert "cannot read tenant 'globex'" in body["error"]
