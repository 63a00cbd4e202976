"""The events API: aiohttp routes.

    POST /v1/events                 a batch of usage records for the authenticated tenant
    GET  /v1/tenants/{name}/usage   the live statement of the tenant's current period
    GET  /v1/tenants/{name}/allowance  what an AI gateway may let it spend: 200, or 402
    *    /v1/authorize[/<path>]     the same as an ext_authz HTTP check (200 allows)
    GET  /healthz                   liveness

Allowance (`budget.allowance`): 200 with the remaining budget, the wallet balance, the phase
and when the period resets; **402 Payment Required** with the same JSON, the reason and
`Retry-After` when the tenant's budget (`scaleDown`) is spent or its prepaid wallet is
empty. `/v1/authorize` takes any method and any path below it (Envoy's ext_authz HTTP
service sends the original method and appends the original path) and the bearer token of
the forwarded `Authorization` header. Usage events are never refused because a budget is
spent: that usage happened.

Every error is a JSON object `{"status": 400, "error": "events[3].promptTokens: ...",
"field": "events[3].promptTokens", "details": [...]}`. A rejected batch writes nothing (the
ledger records a batch all-or-nothing, and every check here runs before it is called). Usage
timestamped more than `max_future` ahead of the API's clock, or more than `max_backdate`
behind it, is refused with 422 naming the field (`events[3].timestamp`).

Limits against hostile or broken clients (`EventsApiConfig`; the header-side ones are applied
by `server.serve`):
- more than `max_inflight` requests at once: 503 with `Retry-After` at once (`limits`);
- more than `auth_failures_per_minute` failed authentications from one client IP: 429 with
  `Retry-After`, the token not even looked at (`limits`);
- a body not received within `body_timeout_s`: 408 naming `body`, connection closed;
  a body over `max_body_bytes`: 413 before it is read; a malformed or truncated body: 400;
- request line and headers: `header_timeout_s`, `max_line_size`, `max_field_size`,
  `max_headers` (`server.serve`; 400 or a closed connection);
- JSON parsing and validation of a batch run on a small thread pool, never on the event
  loop, so one large batch cannot stall every other connection and the health check.

This module must never block the event loop (ledger calls and parsing go to thread pools),
read a body before authenticating its sender, or answer an error without naming the field or
header it is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.budget.allowance import Allowance, allowance
from kubemeter_operator.budget.decision import WalletView
from kubemeter_operator.errors import ConflictError, InputError, TransientError
from kubemeter_operator.events_api.auth import TokenStore, bearer_token
from kubemeter_operator.events_api.limits import FailureLimiter, InflightLimit, client_key
from kubemeter_operator.events_api.ports import EventLedger, TenantsProvider
from kubemeter_operator.events_api.validation import (
    ApiError,
    check_times,
    parse_batch,
    parse_json,
)
from kubemeter_operator.usage.periods import Period

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1 << 20


@dataclass(frozen=True)
class EventsApiConfig:
    max_events: int = 1000
    """Most records in one batch (413 above)."""
    max_body_bytes: int = MIB
    """Largest request body (413 above, decided before the body is parsed)."""
    retry_after_s: int = 5
    """Retry-After of a 503 (ledger or token store unavailable)."""
    ledger_threads: int = 8
    """Threads for blocking ledger calls (kept off the event loop)."""
    max_future: timedelta = timedelta(minutes=5)
    """Usage timestamped further than this ahead of the API's clock is refused (422)."""
    max_backdate: timedelta = timedelta(days=35)
    """Usage timestamped further than this behind the API's clock is refused (422)."""
    max_inflight: int = 256
    """Requests handled at once (from their headers to their response); one more is
    answered 503 with `Retry-After: overload_retry_after_s` at once, never queued."""
    overload_retry_after_s: int = 1
    """Retry-After of the 503 of a request beyond `max_inflight`."""
    header_timeout_s: float = 10.0
    """A client must send its request line and headers within this time of connecting (or
    of its previous response on a kept-alive connection), else the connection is closed.
    Also the idle keep-alive timeout (`server.serve` applies it)."""
    body_timeout_s: float = 30.0
    """A client must send its whole body within this time of its headers (408 after)."""
    max_line_size: int = 4096
    """Longest request line, in bytes (400 above; `server.serve` applies it)."""
    max_field_size: int = 8190
    """Longest header line, in bytes (400 above; `server.serve` applies it)."""
    max_headers: int = 128
    """Most header lines in a request (400 above; `server.serve` applies it)."""
    auth_failures_per_minute: int = 20
    """Failed authentications one client IP may make per minute (a burst of this many, then
    one every 60/N s); beyond it 429 with Retry-After, without checking the token."""
    auth_failure_clients: int = 10_000
    """Most clients whose failures are remembered (least recently failed forgotten first)."""
    parse_threads: int = 2
    """Threads that parse and validate request bodies (kept off the event loop)."""

    def __post_init__(self) -> None:
        for name in (
            "max_events",
            "max_body_bytes",
            "ledger_threads",
            "max_inflight",
            "overload_retry_after_s",
            "max_line_size",
            "max_field_size",
            "max_headers",
            "auth_failures_per_minute",
            "auth_failure_clients",
            "parse_threads",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}: must be at least 1, not {value}")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}: must be more than 0 seconds, not {value}")


CONFIG_KEY = web.AppKey("kubemeter_events_api_config", EventsApiConfig)
INFLIGHT_KEY = web.AppKey("kubemeter_events_api_inflight", InflightLimit)
_STATE_KEY = web.AppKey("kubemeter_events_api_state", object)


@dataclass
class _State:
    ledger: EventLedger
    tokens: TokenStore
    tenants: TenantsProvider | None
    config: EventsApiConfig
    clock: Callable[[], datetime]
    executor: ThreadPoolExecutor
    parse_executor: ThreadPoolExecutor
    auth_failures: FailureLimiter

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a ledger method: awaited if async, else on the API's thread pool."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _state(request: web.Request) -> _State:
    state = request.app[_STATE_KEY]
    assert isinstance(state, _State)
    return state


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _unavailable(state: _State, message: str) -> ApiError:
    return ApiError(
        503,
        message,
        headers={"Retry-After": str(state.config.retry_after_s)},
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = _json(exc.status, exc.body(), exc.headers)
        if exc.status == 413 or exc.close:
            # The body was not read: close rather than drain it for keep-alive.
            response.force_close()
        if exc.close:
            # A client too slow (or too broken) to deserve aiohttp's lingering read of the
            # rest of its body: send the answer and hang up now.
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await response.prepare(request)
                await response.write_eof()
            request.protocol.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status == 413:
            return _json(413, {"status": 413, "error": "request body too large"})
        if exc.status >= 400:
            return _json(exc.status, {"status": exc.status, "error": exc.reason})
        raise
    except Exception:
        log.exception("events API: %s %s failed", request.method, request.path)
        return _json(500, {"status": 500, "error": "internal error"})


AUTHORIZATION = "Authorization"


async def _authenticate(request: web.Request, state: _State) -> str:
    """The tenant of the request's bearer token. A client over its failed-authentication
    budget gets 429 before its token is looked at; each 401 spends one of that budget."""
    client = client_key(request.remote)
    wait = state.auth_failures.retry_after(client)
    if wait:
        raise ApiError(
            429,
            f"{AUTHORIZATION}: too many failed authentications from {client} (more than "
            f"{state.auth_failures.per_minute} a minute); retry in {wait} s",
            field=AUTHORIZATION,
            headers={"Retry-After": str(wait)},
            extra={"retryAfterSeconds": wait},
        )
    token = bearer_token(request.headers.get(AUTHORIZATION))
    if token is None:
        state.auth_failures.failed(client)
        raise ApiError(
            401,
            f"{AUTHORIZATION}: missing bearer token (expected `Bearer <token>`)",
            field=AUTHORIZATION,
            headers={"WWW-Authenticate": 'Bearer realm="kubemeter"'},
        )
    try:
        tenant = await state.tokens.authenticate(token)
    except TransientError as exc:
        raise _unavailable(state, f"cannot check tokens right now: {exc}") from exc
    if tenant is not None and state.tenants is not None and tenant not in state.tenants():
        tenant = None  # the tenant is gone; its token went with it
    if tenant is None:
        state.auth_failures.failed(client)
        raise ApiError(
            401,
            f"{AUTHORIZATION}: invalid token",
            field=AUTHORIZATION,
            headers={"WWW-Authenticate": 'Bearer realm="kubemeter", error="invalid_token"'},
        )
    return tenant


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing (413) one over `limit` bytes before reading or parsing it, (408)
    one not received within `timeout_s`, and (400) a truncated or malformed one."""
    too_large = ApiError(
        413,
        f"body: larger than the limit of {limit} bytes",
        field="body",
        extra={"maxBodyBytes": limit},
    )
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(
            408,
            f"body: not received within the body timeout of {timeout_s:g} s ({size} bytes arrived)",
            field="body",
            extra={"bodyTimeoutSeconds": timeout_s},
            close=True,
        ) from exc
    except (web.RequestPayloadError, ConnectionError) as exc:
        raise ApiError(
            400, f"body: incomplete or malformed: {exc}", field="body", close=True
        ) from exc
    return b"".join(chunks)


def _decode_batch(
    body: bytes, *, tenant: str, config: EventsApiConfig, now: datetime
) -> list[UsageRecord]:
    """Parse and check a batch (CPU work: runs on the parse thread pool)."""
    document = parse_json(body)
    records = parse_batch(document, tenant=tenant, max_events=config.max_events)
    check_times(records, now=now, max_future=config.max_future, max_backdate=config.max_backdate)
    return records


async def post_events(request: web.Request) -> web.Response:
    state = _state(request)
    tenant = await _authenticate(request, state)
    body = await _read_body(request, state.config.max_body_bytes, state.config.body_timeout_s)
    records: list[UsageRecord] = await asyncio.get_running_loop().run_in_executor(
        state.parse_executor,
        functools.partial(
            _decode_batch, body, tenant=tenant, config=state.config, now=state.clock()
        ),
    )
    if not records:
        return _json(202, {"accepted": 0, "duplicates": 0})
    try:
        result = await state.call(state.ledger.record_events, tenant, records)
    except ConflictError as exc:
        index = next((i for i, r in enumerate(records) if r.id == exc.key), None)
        field = f"events[{index}].id" if index is not None else "events"
        raise ApiError(
            409,
            f"{field}: event id {exc.key!r} was already recorded with a different payload",
            field=field,
            extra={"id": exc.key},
        ) from exc
    except InputError as exc:
        field = f"events{exc.field}" if exc.field.startswith("[") else exc.field
        raise ApiError(400, f"{field}: {exc.problem}", field=field or None) from exc
    except TransientError as exc:
        log.warning("events API: ledger unavailable: %s", exc)
        raise _unavailable(state, "the ledger is unavailable; retry later") from exc
    return _json(202, {"accepted": int(result.accepted), "duplicates": int(result.duplicates)})


async def get_usage(request: web.Request) -> web.Response:
    state = _state(request)
    tenant = await _authenticate(request, state)
    name = request.match_info["name"]
    if name != tenant:
        raise ApiError(403, f"the token of tenant {tenant!r} cannot read tenant {name!r}")
    period_text = request.query.get("period")
    if period_text is None:
        period = Period.of(state.clock())
    else:
        try:
            period = Period.parse(period_text)
        except ValueError as exc:
            raise ApiError(400, str(exc), field="period") from exc
    try:
        statement, _final = await state.call(
            billing_statements.statement, state.ledger, tenant, period
        )
    except TransientError as exc:
        raise _unavailable(state, "the ledger is unavailable; retry later") from exc
    except InputError as exc:  # the ledger has no terms (price plan) for it yet
        raise ApiError(
            404, f"no statement for tenant {tenant!r} in {period}: {exc.problem}"
        ) from exc
    return _json(200, statement.to_api(), {"Cache-Control": "no-store"})


def _allowance(ledger: Any, tenant: Tenant, now: datetime) -> Allowance:
    """The tenant's allowance now (blocking ledger reads: runs on the ledger pool). `ledger`
    is the EventLedger, read by `billing.statements` as the usage route does."""
    period = Period.of(now)
    try:
        statement, _final = billing_statements.statement(ledger, tenant.name, period)
        spent, currency = statement.total, statement.currency
    except InputError:  # no terms (price plan) rated for it yet: nothing spent
        spent, currency = Decimal(0), None
    wallet = None
    if tenant.spec.wallet is not None and tenant.spec.wallet.enabled:
        balance = ledger.wallet(tenant.name)
        wallet = WalletView(balance.balance, balance.outstanding)
    return allowance(tenant, period, spent=spent, currency=currency, wallet=wallet)


async def _answer_allowance(state: _State, tenant: str) -> web.Response:
    spec = state.tenants().get(tenant) if state.tenants is not None else None
    if spec is None:
        raise _unavailable(state, f"tenant {tenant!r} is not known to this replica yet")
    now = state.clock()
    try:
        answer: Allowance = await state.call(_allowance, state.ledger, spec, now)
    except TransientError as exc:
        raise _unavailable(state, "the ledger is unavailable; retry later") from exc
    headers = {"Cache-Control": "no-store"}
    if answer.allowed:
        return _json(200, answer.to_api(), headers)
    wait = answer.retry_after_s(now)
    body = {"status": 402, "error": f"tenant {tenant!r}: {answer.decision.reason}",
            **answer.to_api()}  # fmt: skip
    return _json(402, body, {**headers, "Retry-After": str(wait)})


async def get_allowance(request: web.Request) -> web.Response:
    state = _state(request)
    tenant = await _authenticate(request, state)
    name = request.match_info["name"]
    if name != tenant:
        raise ApiError(403, f"the token of tenant {tenant!r} cannot read tenant {name!r}")
    return await _answer_allowance(state, tenant)


async def authorize(request: web.Request) -> web.Response:
    """ext_authz-style check: the forwarded bearer token's tenant, 200 allow, 402 deny."""
    state = _state(request)
    tenant = await _authenticate(request, state)
    return await _answer_allowance(state, tenant)


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


def create_app(
    ledger: EventLedger,
    token_store: TokenStore,
    tenants_provider: TenantsProvider | None = None,
    *,
    config: EventsApiConfig | None = None,
    clock: Callable[[], datetime] = _utcnow,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The events API as an aiohttp application (serve it with `serve()` or a test server).

    `tenants_provider`, when given, is consulted on every request: a token whose tenant no
    longer exists is refused even before the token store has refreshed. `clock` is the
    wall clock of the timestamp checks, `monotonic` the clock of the failed-authentication
    limit.
    """
    cfg = config or EventsApiConfig()
    inflight = InflightLimit(cfg.max_inflight, cfg.overload_retry_after_s)
    # aiohttp's own limit is a backstop; our handler refuses oversized bodies first.
    app = web.Application(middlewares=[_errors, inflight], client_max_size=cfg.max_body_bytes + 1)
    executor = ThreadPoolExecutor(
        max_workers=cfg.ledger_threads, thread_name_prefix="kubemeter-events-api"
    )
    parse_executor = ThreadPoolExecutor(
        max_workers=cfg.parse_threads, thread_name_prefix="kubemeter-events-parse"
    )
    app[CONFIG_KEY] = cfg
    app[INFLIGHT_KEY] = inflight
    app[_STATE_KEY] = _State(
        ledger=ledger,
        tokens=token_store,
        tenants=tenants_provider,
        config=cfg,
        clock=clock,
        executor=executor,
        parse_executor=parse_executor,
        auth_failures=FailureLimiter(
            cfg.auth_failures_per_minute, max_clients=cfg.auth_failure_clients, monotonic=monotonic
        ),
    )

    async def _shutdown(_app: web.Application) -> None:
        parse_executor.shutdown(wait=True, cancel_futures=False)
        executor.shutdown(wait=True, cancel_futures=False)

    app.on_cleanup.append(_shutdown)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/tenants/{name}/usage", get_usage)
    app.router.add_get("/v1/tenants/{name}/allowance", get_allowance)
    app.router.add_route("*", "/v1/authorize", authorize)
    app.router.add_route("*", "/v1/authorize/{path:.*}", authorize)
    app.router.add_get("/healthz", healthz)
    return app
