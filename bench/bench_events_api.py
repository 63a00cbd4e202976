"""Events API benchmark: usage events/s through HTTP into the ledger (SQLite by default).

The API (create_app + serve, StaticTokenStore) runs in a child process on 127.0.0.1; the
parent posts pre-serialised batches of 100 token events from `--concurrency` concurrent
aiohttp clients. 10 % of each batch replays events of an earlier batch (the duplicates an
at-least-once client produces). Prints events/s (all posted events) and new events/s.

    .venv/bin/python bench/bench_events_api.py [--events 100000] [--concurrency 8]
                                               [--db sqlite:///path | postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

BATCH = 100
DUP_SHARE = 0.10
TENANT, TOKEN = "bench", "bench-token-0123456789abcdef"
START = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _server(db: str, pipe: Connection) -> None:
    from kubemeter_operator.events_api import StaticTokenStore, bound_port, create_app, serve
    from kubemeter_operator.ledger import Ledger

    ledger = Ledger.open(db)

    async def main() -> None:
        app = create_app(ledger, StaticTokenStore({TENANT: TOKEN}))
        runner = await serve(app, host="127.0.0.1", port=0)
        pipe.send(bound_port(runner))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await runner.cleanup()

    asyncio.run(main())
    ledger.close()


def _event(i: int) -> dict[str, Any]:
    return {
        "id": f"bench-{i:09d}",
        "kind": "tokens",
        "model": "llama-3-70b",
        "promptTokens": 100 + i % 50,
        "completionTokens": 20 + i % 7,
        "timestamp": (START + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
    }


def _batches(total: int) -> list[bytes]:
    rng = random.Random(42)
    fresh_per_batch = BATCH - int(BATCH * DUP_SHARE)
    out: list[bytes] = []
    next_id = 0
    while next_id < total:
        events = [_event(next_id + k) for k in range(fresh_per_batch)]
        if next_id:
            events += [_event(rng.randrange(next_id)) for _ in range(BATCH - fresh_per_batch)]
        else:
            events += [_event(k) for k in range(BATCH - fresh_per_batch)]
        rng.shuffle(events)
        out.append(json.dumps(events).encode())
        next_id += fresh_per_batch
    return out


async def _post_all(port: int, batches: list[bytes], concurrency: int) -> tuple[int, int, float]:
    url = f"http://127.0.0.1:{port}/v1/events"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    accepted = duplicates = 0
    queue = list(reversed(batches))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal accepted, duplicates
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers=headers) as resp:
                    result = await resp.json()
                    if resp.status != 202:
                        raise RuntimeError(f"{resp.status}: {result}")
                accepted += result["accepted"]
                duplicates += result["duplicates"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, duplicates, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="new events to post")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--db", default=None, help="ledger URL (default: a temp SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        batches = _batches(args.events)
        parent, child = multiprocessing.Pipe()
        server = multiprocessing.get_context("spawn").Process(target=_server, args=(db, child))
        server.start()
        try:
            port = parent.recv()
            accepted, duplicates, elapsed = asyncio.run(_post_all(port, batches, args.concurrency))
        finally:
            parent.send("stop")
            server.join(timeout=60)
    posted = accepted + duplicates
    print(
        f"events API -> {db.split(':', 1)[0]}: {len(batches)} batches of {BATCH} "
        f"({DUP_SHARE:.0%} duplicates), concurrency {args.concurrency}: "
        f"{posted / elapsed:,.0f} events/s posted, {accepted / elapsed:,.0f} new events/s "
        f"({accepted:,} accepted, {duplicates:,} duplicates in {elapsed:.2f} s)"
    )


if __name__ == "__main__":
    main()
