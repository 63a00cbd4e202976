"""The metering loop: run :class:`MeteringCycle` every interval, with backoff and health.

    loop = MeteringLoop(cycle, inputs=lambda: (tenants, plans), on_cycle=update_status)
    task = asyncio.create_task(loop.run())     # ... loop.stop(); await task

* Every ``interval`` (default: the cycle's step, 15 s) one window is metered; while the
  cycle is behind (catching up after an outage) windows follow each other without waiting.
* A TransientError (Prometheus or the ledger unreachable) is retried with exponential
  backoff from ``min_backoff`` up to ``interval``; the checkpoint has not moved, so the next
  successful cycle backfills the gap.
* ``degraded`` maps a source (``prometheus``/``ledger``/``metering`` for whole-cycle failures,
  ``tokens:<kind>:<metric>`` for one token source) to the reason; empty when healthy. The
  status layer turns it into a ``MeteringDegraded`` condition.
* ``on_cycle(result)`` is called after every committed window, ``on_error(exc)`` after every
  failed cycle; both may be plain functions or coroutines. Exceptions they raise are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import (
    KubemeterError,
    LedgerUnavailableError,
    PrometheusUnavailableError,
    TransientError,
)
from kubemeter_operator.metering.cycle import CycleResult, MeteringCycle

log = logging.getLogger(__name__)

Inputs = Callable[[], tuple[Sequence[Tenant], Mapping[str, PricePlanSpec]]]
OnCycle = Callable[[CycleResult], Awaitable[None] | None]
OnError = Callable[[Exception], Awaitable[None] | None]


def _which(exc: Exception) -> str:
    """The source a failed cycle reports as degraded, by the error's type."""
    if isinstance(exc, PrometheusUnavailableError):
        return "prometheus"
    if isinstance(exc, LedgerUnavailableError):
        return "ledger"
    return "metering"


class MeteringLoop:
    def __init__(
        self,
        cycle: MeteringCycle,
        inputs: Inputs,
        *,
        interval_s: float | None = None,
        min_backoff_s: float = 0.5,
        on_cycle: OnCycle | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self.cycle = cycle
        self.inputs = inputs
        self.interval_s = (
            interval_s if interval_s is not None else cycle.config.step.total_seconds()
        )
        self.min_backoff_s = min(min_backoff_s, self.interval_s)
        self.on_cycle = on_cycle
        self.on_error = on_error
        self.degraded: dict[str, str] = {}
        self.failures = 0
        self.last_result: CycleResult | None = None
        self.last_error: Exception | None = None
        self.last_success: datetime | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def backoff_s(self) -> float:
        """The wait after ``failures`` consecutive transient failures."""
        if self.failures <= 0:
            return self.interval_s
        return float(min(self.interval_s, self.min_backoff_s * 2 ** (self.failures - 1)))

    async def step(self, now: datetime | None = None) -> float:
        """Run one cycle (in a worker thread) as of `now` (default: the cycle's clock);
        returns the seconds to wait before the next."""
        try:
            tenants, plans = self.inputs()
            result = await asyncio.to_thread(self.cycle.run, tenants, plans, now)
        except TransientError as exc:
            self.failures += 1
            self.last_error = exc
            self.degraded = {_which(exc): str(exc)}
            log.warning("metering cycle failed (retry in %.1fs): %s", self.backoff_s(), exc)
            self._count("transient")
            await _call(self.on_error, exc)
            return self.backoff_s()
        except KubemeterError as exc:
            self.failures = 0
            self.last_error = exc
            self.degraded = {"metering": str(exc)}
            log.error("metering cycle failed: %s", exc)
            self._count("error")
            await _call(self.on_error, exc)
            return self.interval_s
        except Exception as exc:  # a bug: keep metering, report it
            self.failures = 0
            self.last_error = exc
            self.degraded = {"metering": f"internal error: {exc!r}"}
            log.exception("metering cycle crashed")
            self._count("error")
            await _call(self.on_error, exc)
            return self.interval_s
        self.failures = 0
        self.last_error = None
        self.degraded = result.degraded
        if result.window is None:
            self._count("idle")
            return self.interval_s
        self.last_result = result
        self.last_success = result.window.end
        await _call(self.on_cycle, result)
        return 0.0 if result.behind else self.interval_s

    async def run(self) -> None:
        """Meter until :meth:`stop`."""
        self._stop.clear()
        while not self._stop.is_set():
            started = time.monotonic()
            # the wait counts from the cycle's start, so the cadence does not drift by the
            # time the cycle and its hooks (status writes) took
            wait = await self.step() - (time.monotonic() - started)
            if wait <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)

    def _count(self, outcome: str) -> None:
        if self.cycle.metrics is not None:
            self.cycle.metrics.cycles.labels(outcome).inc()


async def _call(hook: Callable[..., Awaitable[None] | None] | None, arg: object) -> None:
    if hook is None:
        return
    try:
        out = hook(arg)
        if inspect.isawaitable(out):
            await out
    except Exception:
        log.exception("metering hook %r failed", hook)
