"""Serving the events API: next to kopf on the operator's event loop, or on its own.

runner = await serve(create_app(ledger, tokens, tenants), host="0.0.0.0", port=8080)
...
await runner.cleanup()

What the server enforces before a request reaches the app (limits from the app's
`EventsApiConfig`, each overridable here):
- `header_timeout_s`: a client that has not sent a whole request line and headers within this
  time of connecting, or of its previous response on a kept-alive connection, is
  disconnected (slowloris). It is aiohttp's keep-alive timeout, which closes a connection
  whose next request is incomplete when it fires; so it is also the idle keep-alive time.
  Waiting clients cost a socket and a parser, never a task or a thread.
- `max_line_size`, `max_field_size`, `max_headers`: a longer request line or header line, or
  more header lines, is answered 400 (quoting the start of the line) and the connection
  closed; it is logged as one INFO line on `kubemeter_operator.events_api.http`, not as an
  error with a traceback.
- `backlog`: connections the kernel queues before `accept`, so a burst of clients is queued
  rather than refused.
- `ssl_context`: HTTPS (see `tls.server_ssl_context`). The header timeout starts once the
  TLS handshake is done; the handshake itself has asyncio's own limit (60 s), which aiohttp
  does not expose.

This module must never serve without these limits, or fall back to plain HTTP when TLS was
asked for.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kubemeter_operator.events_api.app import CONFIG_KEY, EventsApiConfig

PROTOCOL_LOG = "kubemeter_operator.events_api.http"


class _ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (a line too long, a bad header) as an error with a
    traceback; that is the client's fault and any client can cause it, so it becomes one
    INFO line instead (log floods are a denial of service too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _protocol_logger() -> logging.Logger:
    logger = logging.getLogger(PROTOCOL_LOG)
    if not any(isinstance(f, _ClientErrorsInOneLine) for f in logger.filters):
        logger.addFilter(_ClientErrorsInOneLine())
    return logger


async def serve(
    app: web.Application,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout_s: float = 10.0,
    header_timeout_s: float | None = None,
    backlog: int = 1024,
) -> web.AppRunner:
    """Start serving `app` on the running loop; `await runner.cleanup()` stops it.

    `port=0` picks a free port: see `bound_port(runner)`. `header_timeout_s` defaults to
    the app's `EventsApiConfig.header_timeout_s`.
    """
    config = app.get(CONFIG_KEY) or EventsApiConfig()
    header_timeout = config.header_timeout_s if header_timeout_s is None else header_timeout_s
    if not header_timeout > 0:
        raise ValueError(f"header_timeout_s: must be more than 0 seconds, not {header_timeout}")
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=header_timeout,
        max_line_size=config.max_line_size,
        max_field_size=config.max_field_size,
        max_headers=config.max_headers,
        logger=_protocol_logger(),
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        host,
        port,
        ssl_context=ssl_context,
        backlog=backlog,
    )
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the (first) site of `runner` listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the events API is not listening on a TCP port")
