"""The events API's limits on real sockets: slow clients (headers and bodies) are cut off at
their timeouts without holding up anyone else, oversized or malformed requests are refused,
1,000 concurrent clients are all answered (202 or 503) in bounded time while the health
check stays responsive, failed authentications are limited per client IP, and HTTPS is
served from a real kubernetes.io/tls Secret."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import ssl
import stat
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from kubernetes import client, config

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.errors import InputError
from kubemeter_operator.events_api import (
    EventsApiConfig,
    StaticTokenStore,
    create_app,
    kubernetes_secret_reader,
    server_ssl_context,
)
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.tls import load_cert_chain
from kubemeter_operator.usage.periods import Period

from support.cluster import KubeCluster

if TYPE_CHECKING:
    from conftest import Cert, ServeApi, ServedApi

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PERIOD = Period(2026, 11)
TOKEN = "acme-Zk3q9VbN2xLr7TfW1pYh8MdC4sGj6Ue0oRa5"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def event(i: int) -> dict[str, Any]:
    return {
        "id": f"req-{i:06d}",
        "kind": "tokens",
        "model": "m",
        "completionTokens": 1,
        "timestamp": "2026-11-15T11:00:00Z",
    }


@pytest.fixture
def ledger(tmp_path: Path, completion_plan: PricePlanSpec) -> Iterator[Ledger]:
    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.set_terms("acme", PERIOD, completion_plan)
    yield led
    led.close()


def served(serve_api: ServeApi, ledger: Ledger, **limits: Any) -> ServedApi:
    app = create_app(
        ledger,
        StaticTokenStore({"acme": TOKEN}),
        config=EventsApiConfig(**limits),
        clock=lambda: NOW,
    )
    return serve_api(app)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def healthz_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
        assert resp.status == 200
    return time.monotonic() - started


def trickle(sock: socket.socket, piece: bytes, seconds: float) -> float:
    """Send `piece` every 0.1 s for up to `seconds` or until the server hangs up; return
    when it hung up (seconds since the call)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        time.sleep(0.1)
    return time.monotonic() - started


# -- slow clients ------------------------------------------------------------------------


def test_slow_headers_are_cut_off_at_the_header_timeout_and_hold_no_one_up(
    serve_api: ServeApi, ledger: Ledger
) -> None:
    api = served(serve_api, ledger, header_timeout_s=1.0)
    socks = [connect(api.port) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
    cut_after: list[float] = []

    def slowloris(sock: socket.socket) -> None:
        cut_after.append(trickle(sock, b"X-Slow: 1\r\n", 10.0))

    threads = [threading.Thread(target=slowloris, args=(s,)) for s in socks]
    for thread in threads:
        thread.start()
    # meanwhile the API answers others at once
    assert max(healthz_seconds(api.url) for _ in range(5)) < 0.5
    for thread in threads:
        thread.join(timeout=20)
    for sock in socks:
        sock.close()
    assert len(cut_after) == 50
    assert max(cut_after) < 3.0, cut_after  # cut off at about 1 s, not after the 10 s
    assert min(cut_after) > 0.8


def test_a_slow_body_is_408_at_the_body_timeout_and_the_connection_closed(
    serve_api: ServeApi, ledger: Ledger
) -> None:
    api = served(serve_api, ledger, body_timeout_s=1.0)
    sock = connect(api.port)
    sock.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n["
    )
    hung_up_after = trickle(sock, b" ", 10.0)
    answer = read_all(sock)
    sock.close()
    assert hung_up_after < 3.0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    err = json.loads(body)
    assert err["field"] == "body"
    assert err["bodyTimeoutSeconds"] == 1.0
    assert "body timeout" in err["error"]
    assert sum(q.completion_tokens for q in ledger.period_totals("acme", PERIOD).values()) == 0


@pytest.mark.parametrize(
    ("request_bytes", "named"),
    [
        (b"GET /healthz?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"/healthz?aaa"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", b"bbb"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            b"",
        ),
    ],
    ids=["request-line", "header-line", "too-many-headers"],
)
def test_oversized_request_lines_and_headers_are_400(
    serve_api: ServeApi, ledger: Ledger, request_bytes: bytes, named: bytes
) -> None:
    api = served(serve_api, ledger)
    sock = connect(api.port)
    sock.sendall(request_bytes)
    answer = read_all(sock)  # ... and the server closes the connection
    sock.close()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert named in answer
    assert healthz_seconds(api.url) < 0.5


def test_a_malformed_chunked_body_is_refused_within_the_body_timeout_naming_the_body(
    serve_api: ServeApi, ledger: Ledger
) -> None:
    """aiohttp's parser drops a body whose chunk framing breaks mid-way without telling the
    handler; the body timeout is what ends that request (408), not the client."""
    api = served(serve_api, ledger, body_timeout_s=1.0)
    sock = connect(api.port)
    started = time.monotonic()
    sock.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
        b"4\r\n[{}]\r\n"
    )
    time.sleep(0.3)  # the handler is reading the body when the bad chunk comes
    sock.sendall(b"zz-not-a-chunk-size\r\n\r\n")
    answer = read_all(sock)
    answered_after = time.monotonic() - started
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 408")), answer[:300]
    assert json.loads(body)["field"] == "body"
    assert answered_after < 3.0
    assert healthz_seconds(api.url) < 0.5


# -- many clients ------------------------------------------------------------------------


def test_a_thousand_concurrent_clients_are_answered_202_or_503_in_bounded_time(
    serve_api: ServeApi, ledger: Ledger
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    api = served(serve_api, ledger, max_inflight=32)
    clients = 1000

    async def storm() -> tuple[list[tuple[int, str | None, Any]], list[float]]:
        stop = asyncio.Event()
        health: list[float] = []
        timeout = aiohttp.ClientTimeout(total=60)

        async def probe() -> None:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    started = time.monotonic()
                    async with session.get(f"{api.url}/healthz") as resp:
                        assert resp.status == 200
                    health.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)

        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def post(i: int) -> tuple[int, str | None, Any]:
                async with session.post(
                    f"{api.url}/v1/events",
                    json=[event(i)],
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    return resp.status, resp.headers.get("Retry-After"), await resp.json()

            prober = asyncio.create_task(probe())
            await asyncio.sleep(0.1)
            results = await asyncio.gather(*(post(i) for i in range(clients)))
            stop.set()
            await prober
        return list(results), health

    started = time.monotonic()
    results, health = asyncio.run(storm())
    elapsed = time.monotonic() - started

    assert elapsed < 60  # none hangs
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {202, 503}, sorted(set(statuses))
    accepted = [body for status, _, body in results if status == 202]
    refused = [(retry, body) for status, retry, body in results if status == 503]
    assert accepted, "some requests get through"
    assert refused, "a 1,000-client burst must exceed 32 in flight"
    assert all(retry == "1" and body["maxInflight"] == 32 for retry, body in refused)
    assert sum(body["accepted"] for body in accepted) == len(accepted)
    recorded = sum(q.completion_tokens for q in ledger.period_totals("acme", PERIOD).values())
    assert recorded == len(accepted)  # what was refused wrote nothing
    assert health, "the health check ran during the storm"
    assert max(health) < 2.0, max(health)


# -- failed authentications per client IP ------------------------------------------------


def test_failed_authentications_are_limited_per_client_ip(
    serve_api: ServeApi, ledger: Ledger
) -> None:
    now = [1000.0]
    app = create_app(
        ledger,
        StaticTokenStore({"acme": TOKEN}),
        config=EventsApiConfig(auth_failures_per_minute=2),
        clock=lambda: NOW,
        monotonic=lambda: now[0],
    )
    api = serve_api(app)

    async def post(source: str, token: str, i: int) -> tuple[int, str | None]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"{api.url}/v1/events",
                json=[event(i)],
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            return resp.status, resp.headers.get("Retry-After")

    async def scenario() -> list[tuple[int, str | None]]:
        return [
            await post("127.0.0.1", "wrong-" + TOKEN, 1),
            await post("127.0.0.1", "wrong-" + TOKEN, 2),
            await post("127.0.0.1", "wrong-" + TOKEN, 3),  # limited
            await post("127.0.0.1", TOKEN, 4),  # limited too: the token is not looked at
            await post("127.0.0.2", TOKEN, 5),  # another client is not
            await post("127.0.0.2", "wrong-" + TOKEN, 6),  # and has its own budget
        ]

    assert asyncio.run(scenario()) == [
        (401, None),
        (401, None),
        (429, "30"),
        (429, "30"),
        (202, None),
        (401, None),
    ]
    now[0] += 30
    assert asyncio.run(post("127.0.0.1", TOKEN, 7)) == (202, None)


# -- TLS ---------------------------------------------------------------------------------


def https_post(api: ServedApi, cert: Cert, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{api.url}/v1/events",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30, context=cert.client_context()) as resp:
        return resp.status, json.loads(resp.read())


def test_https_from_a_real_tls_secret(
    kube_cluster: KubeCluster, self_signed: Cert, serve_api: ServeApi, ledger: Ledger
) -> None:
    ns = f"km-tls-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl_ok("create", "namespace", ns)
    try:
        kube_cluster.kubectl_ok(
            "-n",
            ns,
            "create",
            "secret",
            "tls",
            "events-tls",
            f"--cert={self_signed.cert}",
            f"--key={self_signed.key}",
        )
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kube_cluster.kubeconfig
        )
        reader = kubernetes_secret_reader(client.CoreV1Api(api_client))
        context = server_ssl_context(reader, f"{ns}/events-tls")
        with pytest.raises(InputError, match="not found"):
            server_ssl_context(reader, f"{ns}/no-such-secret")
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")
    app = create_app(ledger, StaticTokenStore({"acme": TOKEN}), clock=lambda: NOW)
    api = serve_api(app, context)
    assert api.url.startswith("https://")
    assert https_post(api, self_signed, [event(1)]) == (202, {"accepted": 1, "duplicates": 0})
    # plain HTTP to the TLS port gets no HTTP answer
    sock = connect(api.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not read_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()
    # a client that does not trust the certificate refuses it
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(
            f"{api.url}/healthz", timeout=10, context=ssl.create_default_context()
        )


def test_a_key_that_does_not_match_the_certificate_is_an_error(
    self_signed: Cert, other_self_signed: Cert
) -> None:
    data = {
        "tls.crt": base64.b64encode(self_signed.cert.read_bytes()).decode(),
        "tls.key": base64.b64encode(other_self_signed.key.read_bytes()).decode(),
    }
    with pytest.raises(InputError) as err:
        server_ssl_context(lambda ns, name: data, "kubemeter/events-tls")
    assert "tls.crt" in err.value.field
    assert "tls.key" in err.value.field


class _Spying(ssl.SSLContext):
    """Records the mode of the files (and their directory) it loads a chain from."""

    modes: list[tuple[int, int, int]]

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        directory = os.path.dirname(certfile)
        self.modes = [
            (
                stat.S_IMODE(os.stat(directory).st_mode),
                stat.S_IMODE(os.stat(certfile).st_mode),
                stat.S_IMODE(os.stat(keyfile).st_mode),
            )
        ]
        self.loaded_from = directory
        super().load_cert_chain(certfile, keyfile, password)


def test_without_memfd_the_pem_goes_to_a_private_directory_removed_at_once(
    self_signed: Cert,
) -> None:
    context = _Spying(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain(
        context, self_signed.cert.read_bytes(), self_signed.key.read_bytes(), in_memory=False
    )
    assert context.modes == [(0o700, 0o600, 0o600)]
    assert not os.path.exists(context.loaded_from)


def test_with_memfd_nothing_is_written_to_a_filesystem(self_signed: Cert) -> None:
    context = _Spying(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain(context, self_signed.cert.read_bytes(), self_signed.key.read_bytes())
    assert context.loaded_from == "/proc/self/fd"
