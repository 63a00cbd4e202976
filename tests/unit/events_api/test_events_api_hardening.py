"""The events API against hostile or broken clients, in-process (aiohttp's test server):
the in-flight cap, the failed-authentication limit, weak tokens, parsing off the event loop,
the limits' configuration and the TLS Secret's validation. Real-socket behaviour (timeouts,
header sizes, 1,000 clients, HTTPS) is in tests/integration/events_api/."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import InputError
from kubemeter_operator.events_api import (
    EventsApiConfig,
    FailureLimiter,
    KubernetesTokenStore,
    StaticTokenStore,
    client_key,
    create_app,
    server_ssl_context,
    token_weakness,
)
from kubemeter_operator.events_api import app as app_module
from kubemeter_operator.events_api.tls import parse_secret_ref

Client = TestClient[web.Request, web.Application]

STRONG = "Zk3q9VbN2xLr7TfW1pYh8MdC4sGj6Ue0oRa5"
GOOD = {"acme": "acme-" + STRONG}


def event(i: int) -> dict[str, Any]:
    return {
        "id": f"evt-{i}",
        "kind": "tokens",
        "model": "m",
        "completionTokens": 5,
        "timestamp": "2026-11-15T10:00:00Z",
    }


class Accepting:
    """A ledger that accepts everything; `record_events` waits for `gate` when given."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.recorded = 0

    async def record_events(self, tenant: str, records: Any) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        self.recorded += len(records)
        return type("Result", (), {"accepted": len(records), "duplicates": 0})()

    def get_terms(self, tenant: str, period: Any) -> Any:
        return None

    def period_totals(self, tenant: str, period: Any) -> Any:
        return {}

    def get_statement(self, tenant: str, period: Any) -> Any:
        return None

    def wallet(self, tenant: str) -> Any:
        return None


class CountingTokens:
    """StaticTokenStore that counts how often it is asked."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.store = StaticTokenStore(tokens)
        self.calls = 0

    async def authenticate(self, token: str) -> str | None:
        self.calls += 1
        return await self.store.authenticate(token)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(app: web.Application, scenario: Callable[[Client], Any]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- requests in flight ------------------------------------------------------------------


def test_a_request_beyond_max_inflight_is_503_with_retry_after_at_once() -> None:
    async def scenario(client: Client) -> Any:
        ledger.gate = asyncio.Event()
        held = [
            asyncio.create_task(
                client.post("/v1/events", json=[event(i)], headers=bearer(GOOD["acme"]))
            )
            for i in range(3)
        ]
        inflight = client.app[app_module.INFLIGHT_KEY]
        for _ in range(500):
            if inflight.in_flight == 3:
                break
            await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        over = await client.post("/v1/events", json=[event(9)], headers=bearer(GOOD["acme"]))
        refused_in = asyncio.get_running_loop().time() - started
        over_body = await over.json()
        health = await client.get("/healthz")
        ledger.gate.set()
        statuses = [(await t).status for t in held]
        after = await client.post("/v1/events", json=[event(10)], headers=bearer(GOOD["acme"]))
        return (
            over.status,
            over.headers.get("Retry-After"),
            over_body,
            refused_in,
            health.status,
            statuses,
            after.status,
        )

    ledger = Accepting()
    app = create_app(ledger, StaticTokenStore(GOOD), config=EventsApiConfig(max_inflight=3))
    status, retry_after, body, refused_in, health, held, after = run(app, scenario)
    assert (status, retry_after) == (503, "1")
    assert body["maxInflight"] == 3
    assert "max_inflight" in body["error"]
    assert refused_in < 1.0  # answered at once, not queued behind the held requests
    assert health == 200  # probes are never counted nor refused
    assert held == [202, 202, 202]
    assert after == 202  # the slots are given back
    assert ledger.recorded == 4


# -- failed authentications per client ---------------------------------------------------


def test_failed_authentications_beyond_the_limit_are_429_without_checking_the_token() -> None:
    clock = Clock()
    tokens = CountingTokens(GOOD)
    app = create_app(
        Accepting(),
        tokens,
        config=EventsApiConfig(auth_failures_per_minute=3),
        monotonic=clock,
    )

    async def scenario(client: Client) -> Any:
        out: dict[str, Any] = {}
        # successful authentications cost nothing: 50 good requests, then 3 failures allowed
        good = [
            (await client.post("/v1/events", json=[event(i)], headers=bearer(GOOD["acme"]))).status
            for i in range(50)
        ]
        out["good"] = set(good)
        bad = [
            (await client.post("/v1/events", json=[event(1)], headers=bearer("wrong-" + STRONG)))
            for _ in range(3)
        ]
        out["bad"] = [r.status for r in bad]
        asked = tokens.calls
        limited = await client.post("/v1/events", json=[event(1)], headers=bearer("guess"))
        out["limited"] = (limited.status, limited.headers.get("Retry-After"), await limited.json())
        good_but_limited = await client.post(
            "/v1/events", json=[event(2)], headers=bearer(GOOD["acme"])
        )
        no_token = await client.get("/v1/tenants/acme/usage")
        out["while_limited"] = (good_but_limited.status, no_token.status)
        out["store_asked_while_limited"] = tokens.calls - asked
        clock.t += int(limited.headers["Retry-After"])
        again = await client.post("/v1/events", json=[event(3)], headers=bearer(GOOD["acme"]))
        out["after_retry_after"] = again.status
        return out

    out = run(app, scenario)
    assert out["good"] == {202}
    assert out["bad"] == [401, 401, 401]
    status, retry_after, body = out["limited"]
    assert (status, retry_after) == (429, "20")  # 3 a minute: one more every 20 s
    assert body["field"] == "Authorization"
    assert body["retryAfterSeconds"] == 20
    assert out["while_limited"] == (429, 429)
    assert out["store_asked_while_limited"] == 0  # the token was not even looked at
    assert out["after_retry_after"] == 202


def test_failure_limiter_is_a_token_bucket_with_bounded_memory() -> None:
    clock = Clock()
    limiter = FailureLimiter(60, max_clients=100, monotonic=clock)
    for _ in range(60):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 1  # refills one failure a second
    clock.t += 1
    assert limiter.retry_after("10.0.0.1") == 0
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter) == 100  # least recently failed clients are forgotten
    clock.t += 120
    assert limiter.retry_after("10.1.3.231") == 0
    assert len(limiter) == 99  # a refilled bucket is dropped


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "unknown"),
    ],
)
def test_clients_are_keyed_by_ip_and_ipv6_by_its_64(remote: str | None, key: str) -> None:
    assert client_key(remote) == key


# -- weak tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("acme-secret-token-0123456789", "28 bytes"),  # the unit tests' token: too short
        ("a" * 64, "1 distinct"),
        ("0123456789" * 4, "repeats a 10-character pattern"),
        ("changeme-changeme-changeme-changeme", "distinct"),
        ("password-password-1234567890-abcdefgh", "placeholder words (password)"),
        ("abcdefghijklmnopqrstuvwxyz0123456789", "consecutive characters"),
        ("changeme-1234567890-abcdefghij-xyz", "placeholder words (changeme)"),
    ],
)
def test_weak_tokens_are_named_with_the_reason(token: str, fragment: str) -> None:
    why = token_weakness(token)
    assert why is not None
    assert fragment in why
    assert token not in why


@pytest.mark.parametrize(
    "token",
    [
        "Eg0h4gisRRh5RKTVdQkfRFhFUgejh59LgdgqxThnsxE",  # openssl rand -base64 32 style
        "ded05ea8681053b1e4ff28b1f055993f53d4695691d4487c74eb629386850a63",  # -hex 32
        "3f2b6c1e-8d4a-4f7e-9b2c-1a5d6e7f8a9b",  # a UUID
        "my-token-HXtOd0ODTxjulXdiWyHmHkhCBws",  # a placeholder word next to 27 random
    ],
)
def test_generated_tokens_are_strong(token: str) -> None:
    assert token_weakness(token) is None


def tenant(name: str, secret: str) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "pricePlanRef": {"name": "standard"},
                "namespaces": [name],
                "apiTokenSecretRef": {"namespace": "kubemeter", "name": secret},
            },
        }
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_weak_token_in_a_secret_never_authenticates_and_is_reported() -> None:
    tenants = {"acme": tenant("acme", "acme-token"), "globex": tenant("globex", "globex-token")}
    secrets = {
        ("kubemeter", "acme-token"): {"token": b64("acme-secret-token-0123456789")},
        ("kubemeter", "globex-token"): {"token": b64("globex-" + STRONG)},
    }
    store = KubernetesTokenStore(lambda: tenants, lambda ns, name: secrets.get((ns, name)))

    async def scenario() -> list[str | None]:
        return [
            await store.authenticate("acme-secret-token-0123456789"),
            await store.authenticate("globex-" + STRONG),
        ]

    assert asyncio.run(scenario()) == [None, "globex"]
    assert set(store.problems) == {"acme"}
    assert store.problem_reasons == {"acme": "WeakToken"}
    assert "kubemeter/acme-token" in store.problems["acme"]
    assert "28 bytes" in store.problems["acme"]
    assert "acme-secret-token-0123456789" not in store.problems["acme"]


def test_every_problem_has_a_stable_reason() -> None:
    tenants = {
        "gone": tenant("gone", "missing"),
        "nokey": tenant("nokey", "empty"),
        "a": tenant("a", "shared"),
        "b": tenant("b", "shared"),
    }
    secrets = {("kubemeter", "empty"): {}, ("kubemeter", "shared"): {"token": b64(STRONG)}}
    store = KubernetesTokenStore(lambda: tenants, lambda ns, name: secrets.get((ns, name)))
    asyncio.run(store.refresh())
    assert store.problem_reasons == {
        "gone": "SecretNotFound",
        "nokey": "TokenKeyMissing",
        "a": "SharedToken",
        "b": "SharedToken",
    }
    assert set(store.problems) == set(store.problem_reasons)


def test_static_store_checks_strength_only_when_asked() -> None:
    assert asyncio.run(StaticTokenStore({"acme": "short"}).authenticate("short")) == "acme"
    with pytest.raises(ValueError, match=r"tenant 'acme'.*too weak.*5 bytes"):
        StaticTokenStore({"acme": "short"}, check_strength=True)
    strict = StaticTokenStore(GOOD, check_strength=True)
    assert asyncio.run(strict.authenticate(GOOD["acme"])) == "acme"


def test_concurrent_unknown_tokens_cause_one_secret_read_not_one_each() -> None:
    reads = 0
    tenants = {"acme": tenant("acme", "acme-token")}

    def read(namespace: str, name: str) -> dict[str, str] | None:
        nonlocal reads
        reads += 1
        return {"token": b64("acme-" + STRONG)}

    store = KubernetesTokenStore(lambda: tenants, read, miss_refresh_interval_s=5)

    async def scenario() -> list[str | None]:
        return list(
            await asyncio.gather(*(store.authenticate(f"bad-{i}-{STRONG}") for i in range(200)))
        )

    assert asyncio.run(scenario()) == [None] * 200
    assert reads <= 2  # the first load, and at most one refresh for the misses behind it


# -- parsing off the event loop ----------------------------------------------------------


def test_bodies_are_parsed_on_the_parse_threads_not_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real = app_module.parse_json

    def spy(body: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return real(body)

    monkeypatch.setattr(app_module, "parse_json", spy)
    app = create_app(Accepting(), StaticTokenStore(GOOD))

    async def scenario(client: Client) -> int:
        r = await client.post("/v1/events", json=[event(1)], headers=bearer(GOOD["acme"]))
        return r.status

    assert run(app, scenario) == 202
    assert len(threads) == 1
    assert threads[0].startswith("kubemeter-events-parse")


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_inflight", 0),
        ("auth_failures_per_minute", 0),
        ("header_timeout_s", 0),
        ("body_timeout_s", -1.0),
        ("max_field_size", 0),
        ("parse_threads", 0),
    ],
)
def test_config_refuses_a_bad_limit_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        EventsApiConfig(**{field: value})


def test_default_hardening_limits() -> None:
    config = EventsApiConfig()
    assert (config.max_inflight, config.header_timeout_s, config.body_timeout_s) == (256, 10, 30)
    assert config.auth_failures_per_minute == 20


# -- the TLS Secret ----------------------------------------------------------------------


def test_tls_secret_ref_must_be_namespace_slash_name() -> None:
    assert parse_secret_ref("kubemeter/events-tls") == ("kubemeter", "events-tls")
    for bad in ("events-tls", "/x", "a/", "a/b/c"):
        with pytest.raises(InputError, match="events_tls_secret"):
            parse_secret_ref(bad)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (None, "secret kubemeter/events-tls"),
        ({"tls.crt": b64("-----BEGIN CERTIFICATE-----\n")}, "data.tls.key"),
        ({"tls.key": b64("-----BEGIN PRIVATE KEY-----\n")}, "data.tls.crt"),
        ({"tls.crt": "%%%", "tls.key": b64("k")}, "data.tls.crt"),
        ({"tls.crt": b64("hello"), "tls.key": b64("k")}, "data.tls.crt"),
        (
            {
                "tls.crt": b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                "tls.key": b64("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            },
            "data.tls.crt/data.tls.key",
        ),
    ],
    ids=["no-secret", "no-key", "no-cert", "not-base64", "not-pem", "garbage-pem"],
)
def test_an_unusable_tls_secret_is_an_error_naming_the_key(
    data: dict[str, str] | None, field: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError) as err:
        server_ssl_context(lambda ns, name: data, "kubemeter/events-tls")
    assert err.value.field.endswith(field)
