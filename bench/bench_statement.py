"""Statement benchmark: time to produce a period statement for a tenant with 1,000,000 usage
records in the ledger (target < 1 s). Loading uses record_events in large batches.

    .venv/bin/python bench/bench_statement.py [--records 1000000] [--only sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import GpuUsage, TokenUsage, UsageRecord
from kubemeter_operator.billing.statements import running_statement
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.usage.periods import Period

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from loader import pgtmp

PLAN = PricePlanSpec.model_validate({
    "currency": "USD", "platformFee": "100",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
         "pricing": {"model": "flat", "unitPrice": "2.5"}},
        {"name": "prompt", "kind": "promptTokens", "unit": "1m-tokens",
         "pricing": {"model": "flat", "unitPrice": "3"}},
    ],
})  # fmt: skip


def records(n: int, start: int) -> list[UsageRecord]:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    out: list[UsageRecord] = []
    for i in range(start, start + n):
        at = base + timedelta(seconds=i * 2)
        if i % 4 == 0:
            out.append(GpuUsage(id=f"g{i}", model="H100", allocated_ms=60_000, active_ms=30_000,
                                window_start=at, window_end=at + timedelta(minutes=1)))  # fmt: skip
        else:
            out.append(TokenUsage(id=f"t{i}", model=f"m{i % 7}", prompt_tokens=i % 5000,
                                  completion_tokens=i % 777, timestamp=at))  # fmt: skip
    return out


def run(url: str, n: int, label: str) -> None:
    with Ledger.open(url) as ledger:
        t0 = time.perf_counter()
        chunk = 10_000
        for start in range(0, n, chunk):
            ledger.record_events("acme", records(min(chunk, n - start), start))
        load = time.perf_counter() - t0
        ledger.set_terms("acme", Period(2026, 11), PLAN)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            st = running_statement(ledger, "acme", Period(2026, 11))
            times.append(time.perf_counter() - t)
        print(f"{label:<11} {n:>8} records loaded in {load:6.1f} s; statement in "
              f"{min(times) * 1000:7.1f} ms (best of 5, worst {max(times) * 1000:.1f} ms); "
              f"total {st.total} {st.currency}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--only", choices=("sqlite", "postgresql"))
    args = p.parse_args()
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/bench.db", args.records, "sqlite")
    if args.only in (None, "postgresql"):
        with pgtmp.url_or_start(os.environ.get("KUBEMETER_BENCH_POSTGRES_URL")) as url:
            run(url, args.records, "postgresql")


if __name__ == "__main__":
    main()
