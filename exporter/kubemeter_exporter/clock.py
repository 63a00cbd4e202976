"""Clocks injected into the collector and the simulated backend.

The collector measures intervals with ``monotonic_ns`` and stamps samples with ``time``.
"""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol


class Clock(Protocol):
    def monotonic_ns(self) -> int: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def monotonic_ns(self) -> int:
        return _time.monotonic_ns()

    def time(self) -> float:
        return _time.time()


class ManualClock:
    """A clock that only moves when told to (tests, benchmarks)."""

    def __init__(self, start_ns: int = 0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start_ns
        self._wall0 = wall_start - start_ns / 1e9
        self._lock = threading.Lock()

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._now

    def time(self) -> float:
        return self._wall0 + self.monotonic_ns() / 1e9

    def advance(self, seconds: float = 0.0, *, ms: int = 0) -> None:
        with self._lock:
            self._now += round(seconds * 1e9) + ms * 1_000_000

    def set_ms(self, ms: int) -> None:
        with self._lock:
            if ms * 1_000_000 < self._now:
                raise ValueError("a monotonic clock cannot go back")
            self._now = ms * 1_000_000


class ScaledClock:
    """Real monotonic time since creation, multiplied by ``speed`` (``--simulate --speed``)."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0 = _time.monotonic_ns()
        self._wall0 = _time.time()

    def monotonic_ns(self) -> int:
        return int((_time.monotonic_ns() - self._t0) * self.speed)

    def time(self) -> float:
        return self._wall0 + (_time.monotonic_ns() - self._t0) / 1e9
