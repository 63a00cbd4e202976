"""Ingest benchmark: usage events/s written idempotently with Ledger.record_events.

Batches of 100 token events, 10 % of each batch replaying events already recorded (the
duplicates an at-least-once client produces). Into SQLite (a temp file) and PostgreSQL
(a throwaway server started with hack/pgtmp.py, fsync on, unless
KUBEMETER_BENCH_POSTGRES_URL points at one). Target: >= 20,000 events/s into PostgreSQL on
2 cores.

    .venv/bin/python bench/bench_ingest.py [--events 200000] [--only sqlite|postgresql]
    taskset -c 0,1 .venv/bin/python bench/bench_ingest.py     # pin to 2 cores
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubemeter_operator.api.usage import TokenUsage, UsageRecord
from kubemeter_operator.ledger import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from loader import pgtmp

BATCH = 100
DUP_SHARE = 0.10


def make_batches(n_events: int, tenants: int, seed: int = 7) -> list[tuple[str, list[UsageRecord]]]:
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    fresh_per_batch = BATCH - int(BATCH * DUP_SHARE)
    batches: list[tuple[str, list[UsageRecord]]] = []
    history: dict[str, list[UsageRecord]] = {}
    made = 0
    while made < n_events:
        tenant = f"tenant-{rng.randrange(tenants)}"
        past = history.setdefault(tenant, [])
        batch: list[UsageRecord] = []
        for _ in range(fresh_per_batch):
            made += 1
            batch.append(
                TokenUsage(
                    id=f"{tenant}-evt-{made}",
                    model=rng.choice(("llama-3-70b", "mixtral-8x7b", "qwen-2-72b")),
                    prompt_tokens=rng.randrange(1, 4000),
                    completion_tokens=rng.randrange(1, 1000),
                    timestamp=base + timedelta(seconds=made * 3),
                )
            )
        dups = rng.sample(past, min(len(past), BATCH - fresh_per_batch)) if past else []
        batch += dups
        past.extend(batch[:fresh_per_batch])
        if len(past) > 2000:
            del past[:1000]
        batches.append((tenant, batch))
    return batches


def run(url: str, batches: list[tuple[str, list[UsageRecord]]], label: str) -> None:
    ledger = Ledger.open(url)
    try:
        # warm up (connections, statement caches) on a separate tenant
        warm = [r.model_copy(update={"id": f"warmup-{i}"}) for i, r in enumerate(batches[0][1])]
        ledger.record_events("warmup", warm)
        total = accepted = dups = 0
        start = time.perf_counter()
        cpu0 = time.process_time()
        for tenant, batch in batches:
            result = ledger.record_events(tenant, batch)
            total += len(batch)
            accepted += result.accepted
            dups += result.duplicates
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        print(
            f"{label:<11} {total:>8} events in {elapsed:6.2f} s = {total / elapsed:>9,.0f} "
            f"events/s  (accepted {accepted}, duplicates {dups}; batches of {BATCH}; "
            f"client CPU {cpu:.2f} s)"
        )
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    batches = make_batches(args.events, args.tenants)
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/bench.db", batches, "sqlite")
    if args.only in (None, "postgresql"):
        with pgtmp.url_or_start(
            os.environ.get("KUBEMETER_BENCH_POSTGRES_URL"), durable=True
        ) as url:
            run(url, batches, "postgresql")


if __name__ == "__main__":
    main()
