"""PrometheusClient error mapping against a tiny local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from kubemeter_operator.errors import (
    InputError,
    PermanentError,
    PrometheusUnavailableError,
    TransientError,
)
from kubemeter_operator.metering.prometheus import PrometheusClient

RESPONSES: dict[str, tuple[int, Any]] = {}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = self.path.split("query=", 1)[-1].split("&", 1)[0]
        code, body = RESPONSES.get(query, (200, {"status": "success", "data": {"result": []}}))
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


NOW = datetime(2026, 11, 10, tzinfo=UTC)


def test_vector_parsed(url: str) -> None:
    RESPONSES["ok"] = (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "m", "pod": "p"}, "value": [1, "1234"]},
        {"metric": {"pod": "nan"}, "value": [1, "NaN"]},
    ]}})  # fmt: skip
    samples = PrometheusClient(url).query("ok", NOW)
    assert len(samples) == 1
    assert samples[0].labels == {"pod": "p"}
    assert samples[0].value == 1234.0


def test_errors_are_classified(url: str) -> None:
    RESPONSES["bad"] = (400, {"status": "error", "errorType": "bad_data", "error": "parse"})
    RESPONSES["down"] = (503, "unavailable")
    RESPONSES["exec"] = (422, {"status": "error", "errorType": "execution"})
    RESPONSES["html"] = (200, "<html>proxy</html>")
    client = PrometheusClient(url)
    with pytest.raises(InputError):
        client.query("bad", NOW)
    with pytest.raises(TransientError):
        client.query("down", NOW)
    with pytest.raises(PermanentError):
        client.query("exec", NOW)
    with pytest.raises(TransientError):
        client.query("html", NOW)
    with pytest.raises(InputError):
        client.query("ok", datetime(2026, 1, 1))  # noqa: DTZ001


def test_unreachable_is_transient() -> None:
    client = PrometheusClient("http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(PrometheusUnavailableError):
        client.query("up", NOW)
