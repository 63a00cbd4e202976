"""Leader election: exactly one operator replica meters, bills, closes periods, burns
wallets (and, later, enforces), elected by a coordination.k8s.io Lease. Every replica keeps
its caches warm and serves the events API.

The algorithm (the one client-go's leaderelection uses):

- A replica that does not hold the Lease reads it every `renew_s`. It takes the Lease over
  only when the holder has not changed the Lease for a whole `duration_s`, measured on the
  replica's *own* monotonic clock since it last saw the Lease change (so clocks that
  disagree between nodes never matter), or when the Lease is empty or missing.
- The holder renews every `renew_s` (writes `renewTime`). Every write carries the
  resourceVersion it read: of two replicas racing for it, the API server lets one win (409
  for the other).
- The holder is *leading* only while its last successful renew is younger than
  `deadline_s` = duration_s - renew_s: it stops acting (meters nothing, writes nothing)
  before any standby can take over, even if renews merely fail. A process that was paused
  (SIGSTOP, a long GC, a frozen VM) wakes with an old renew on its monotonic clock and acts
  on nothing until it has renewed again.

Failover: a standby takes over between `duration_s` and `duration_s + renew_s` after the
leader's last renew (defaults 12 s and 3 s: within 15 s). The ledger stays the safety net
behind the Lease: metering windows are idempotent and their checkpoint is compare-and-set,
a period closes under a row lock, wallet burns are per period under the wallet's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from kubemeter_operator.errors import ConflictError, KubemeterError
from kubemeter_operator.kube.lease import LeaseRecord

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    def get(self) -> LeaseRecord | None: ...

    def create(self, rec: LeaseRecord) -> LeaseRecord: ...

    def replace(self, rec: LeaseRecord) -> LeaseRecord: ...


@dataclass
class Observation:
    record: LeaseRecord
    seen_at: float
    """Monotonic time at which this version of the Lease was first seen."""


@dataclass
class LeaderElector:
    store: LeaseStore
    identity: str
    duration_s: float = 12.0
    renew_s: float = 3.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)
    on_change: Callable[[bool], None] | None = None
    """Called with True when this replica starts leading, False when it stops."""
    _observed: Observation | None = None
    _renewed_at: float | None = None
    _leading: bool = False
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    """(monotonic time, leading) of every change, for logs and tests."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_s < self.duration_s:
            raise ValueError("renew_s must be positive and shorter than duration_s")

    @property
    def deadline_s(self) -> float:
        return self.duration_s - self.renew_s

    @property
    def leading(self) -> bool:
        """True while this replica may act: it holds the Lease and renewed it recently."""
        return (
            self._leading
            and self._renewed_at is not None
            and self.clock() - self._renewed_at < self.deadline_s
        )

    def step(self) -> bool:
        """One attempt to acquire or renew (blocking; run it in a thread). Returns whether
        this replica is leading afterwards."""
        try:
            self._attempt()
        except ConflictError:  # another replica wrote the Lease first: it leads, not us
            log.info("lease: another replica changed it first")
            self._leading = False
        except KubemeterError as exc:
            log.warning("lease: cannot reach it: %s", exc)
        leading = self.leading
        self._set(leading)
        return leading

    def _attempt(self) -> None:
        now = self.clock()
        rec = self.store.get()
        if rec is None:
            self._acquired(self.store.create(self._mine(None)), now)
            return
        if self._observed is None or self._observed.record != rec:
            self._observed = Observation(rec, now)
        if rec.holder == self.identity:
            renewed = self.store.replace(replace(rec, renew_time=self.wall()))
            self._acquired(renewed, now)
            return
        stale = now - self._observed.seen_at >= self.duration_s
        if rec.holder and not stale:
            self._leading = False  # someone else holds it and renews it
            return
        log.info("lease: taking over from %s", rec.holder or "nobody")
        self._acquired(self.store.replace(self._mine(rec)), now)

    def _mine(self, rec: LeaseRecord | None) -> LeaseRecord:
        t = self.wall()
        return LeaseRecord(
            holder=self.identity,
            duration_s=round(self.duration_s),
            acquire_time=t,
            renew_time=t,
            transitions=(rec.transitions + 1) if rec is not None else 0,
            resource_version=rec.resource_version if rec is not None else "",
        )

    def _acquired(self, rec: LeaseRecord, now: float) -> None:
        self._observed = Observation(rec, now)
        self._renewed_at = now
        self._leading = True

    def _set(self, leading: bool) -> None:
        was = self.transitions[-1][1] if self.transitions else False
        if leading == was:
            return
        self.transitions.append((self.clock(), leading))
        log.info("lease: %s", "leading" if leading else "not leading")
        if self.on_change is not None:
            self.on_change(leading)

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire/renew every `renew_s` until `stop`; then give the Lease up if held."""
        while not stop.is_set():
            await asyncio.to_thread(self.step)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.renew_s)
        if self._leading:
            with contextlib.suppress(KubemeterError):
                await asyncio.to_thread(self.release)

    def release(self) -> None:
        """Stop leading and empty the Lease, so a standby takes over at once."""
        self._leading = False
        self._set(False)
        rec = self.store.get()
        if rec is not None and rec.holder == self.identity:
            self.store.replace(replace(rec, holder=None, renew_time=self.wall()))
