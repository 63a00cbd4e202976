"""Serving the events API: next to kopf on the operator's event loop, or on its own.

runner = await serve(create_app(ledger, tokens, tenants), host="0.0.0.0", port=8080)
...
await runner.cleanup()
"""

from __future__ import annotations

import ssl

from aiohttp import web


async def serve(
    app: web.Application,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout_s: float = 10.0,
) -> web.AppRunner:
    """Start serving `app` on the running loop; `await runner.cleanup()` stops it.

    `port=0` picks a free port: see `bound_port(runner)`.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the (first) site of `runner` listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the events API is not listening on a TCP port")
