"""Load and abuse limits of the events API: requests in flight, failed authentications.

- `InflightLimit(limit, retry_after_s)`: an aiohttp middleware that counts the requests
  being handled (from the end of their headers to their response, body read included) and
  answers **503** with `Retry-After` at once to one beyond `limit`. No queue: an overloaded
  replica sheds load immediately, so clients retry (another replica, or later) instead of
  piling up on this one. `/healthz` is never counted nor refused, so probes see a live
  process even when it is shedding load.
- `FailureLimiter`: a token bucket of failed authentications per client (`client_key`: the
  peer IP, an IPv6 client by its /64). A client may fail `per_minute` times in a burst, then
  once every `60 / per_minute` seconds; beyond that the API answers **429** with
  `Retry-After` without looking at the token at all (no token-store lookup, no Secret
  refresh). Successful authentications cost nothing, so a client that only presents good
  tokens is never limited; one that shares its IP with a failing client is (behind a proxy,
  all clients share the proxy's IP: size `per_minute` for that). Memory is bounded: at most
  `max_clients` buckets, least recently used evicted first, and a bucket that has refilled
  is dropped.

Concurrent failures from one client that are all past the check before the first is counted
may overshoot the limit by the number in flight (at most the in-flight limit).

This module must never queue or delay a request (answer, or refuse at once), trust a
client-supplied header (`X-Forwarded-For`) to identify a client, or grow without bound.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from kubemeter_operator.events_api.validation import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNLIMITED_PATHS = frozenset({"/healthz"})
"""Paths the in-flight limit neither counts nor refuses (probes)."""


class InflightLimit:
    """An aiohttp middleware that refuses (503, `Retry-After: retry_after_s`) a request
    beyond `limit` handled at once; `in_flight` is how many are."""

    __middleware_version__ = 1  # a new-style aiohttp middleware

    def __init__(
        self, limit: int, retry_after_s: int, *, unlimited: frozenset[str] = UNLIMITED_PATHS
    ) -> None:
        if limit < 1:
            raise ValueError(f"max_inflight: must be at least 1, not {limit}")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.unlimited = unlimited
        self.in_flight = 0

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in self.unlimited:
            return await handler(request)
        if self.in_flight >= self.limit:
            raise ApiError(
                503,
                f"overloaded: {self.limit} requests are already in flight (max_inflight); "
                f"retry in {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)},
                extra={"maxInflight": self.limit},
            )
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1


def client_key(remote: str | None) -> str:
    """Who a request comes from, for the failure limit: its peer address (the TCP peer,
    never a forwarded-for header); an IPv6 client by its /64, which one host usually owns
    whole; an IPv4-mapped IPv6 address as the IPv4 address."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote  # a unix socket path or similar
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Failed authentications per client: a token bucket, `per_minute` deep and refilled at
    `per_minute` per minute, for at most `max_clients` clients (LRU)."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_clients: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"auth_failures_per_minute: must be at least 1, not {per_minute}")
        if max_clients < 1:
            raise ValueError(f"auth_failure_clients: must be at least 1, not {max_clients}")
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0  # per second
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """client -> (failures it may still make, when that was computed)."""

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, client: str, now: float) -> float:
        entry = self._buckets.get(client)
        if entry is None:
            return self._capacity
        level, at = entry
        return min(self._capacity, level + (now - at) * self._rate)

    def retry_after(self, client: str) -> int:
        """0 when `client` may try to authenticate; else the whole seconds until it may."""
        now = self._monotonic()
        level = self._level(client, now)
        if level >= self._capacity:
            self._buckets.pop(client, None)  # refilled: forget it
            return 0
        if level >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - level) / self._rate))

    def failed(self, client: str) -> None:
        """Count one failed authentication of `client`."""
        now = self._monotonic()
        # A burst that overshoots (concurrent failures) waits longer, at most two windows.
        level = max(-self._capacity, self._level(client, now) - 1.0)
        self._buckets[client] = (level, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
