"""Fixtures of the events API's real-socket tests.

- `serve_api(app, ssl_context=None)`: the app served by `events_api.serve` on its own event
  loop in a background thread, on a free 127.0.0.1 port; stopped at the end of the test.
- `completion_plan`: a price plan with one flat completion-token meter (0.001 a token).
- `self_signed`, `other_self_signed`: self-signed certificates and keys for 127.0.0.1 and
  localhost, made with the openssl CLI (the `cryptography` package is not installed in the
  test environment).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.events_api import bound_port, serve


class ServedApi:
    """The app on its own event loop in a background thread, on a free 127.0.0.1 port."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(
            serve(app, host="127.0.0.1", port=0, ssl_context=ssl_context), self.loop
        ).result(timeout=30)
        self.port = bound_port(self.runner)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


ServeApi = Callable[..., ServedApi]


@pytest.fixture
def serve_api() -> Iterator[ServeApi]:
    served: list[ServedApi] = []

    def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> ServedApi:
        api = ServedApi(app, ssl_context)
        served.append(api)
        return api

    yield start
    for api in served:
        api.close()


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_cert(directory: Path, name: str = "events") -> Cert:
    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - openssl is a system dependency of the tests
        pytest.fail("the openssl CLI is needed (make system-deps)")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Cert(cert, key)


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_self_signed(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A second, unrelated certificate and key."""
    return make_cert(tmp_path_factory.mktemp("tls-other"), "other")


@pytest.fixture(scope="session")
def completion_plan() -> PricePlanSpec:
    return PricePlanSpec.model_validate(
        {
            "currency": "USD",
            "meters": [
                {
                    "name": "completion",
                    "kind": "completionTokens",
                    "unit": "token",
                    "pricing": {"model": "flat", "unitPrice": "0.001"},
                }
            ],
        }
    )
