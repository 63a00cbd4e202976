"""Leader election over a Lease with the API server's optimistic concurrency (a fake store
that refuses stale resourceVersions with 409), on fake monotonic clocks: one leader at a
time, takeover only after a whole lease duration without change, a paused leader acts on
nothing, a released Lease is taken at once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kubemeter_operator.controller.leader import LeaderElector
from kubemeter_operator.errors import ConflictError, TransientError
from kubemeter_operator.kube.lease import LeaseRecord


class FakeLeases:
    """One Lease, versioned like the API server's (a stale resourceVersion is a 409)."""

    def __init__(self) -> None:
        self.rec: LeaseRecord | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise TransientError("lease: API server unreachable")

    def get(self) -> LeaseRecord | None:
        self._check()
        return self.rec

    def create(self, rec: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.rec is not None:
            raise ConflictError("lease", "already exists")
        return self._store(rec)

    def replace(self, rec: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.rec is None or rec.resource_version != self.rec.resource_version:
            raise ConflictError("lease", "stale resourceVersion")
        return self._store(rec)

    def _store(self, rec: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.rec = replace(rec, resource_version=str(self.version))
        return self.rec


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(store: FakeLeases, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(store, name, duration_s=12, renew_s=3, clock=clock,
                         wall=lambda: datetime(2026, 12, 2, tzinfo=UTC))  # fmt: skip


def test_one_leader_and_a_standby_that_waits_a_whole_lease() -> None:
    store, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(store, "a", ca), elector(store, "b", cb)
    assert a.step() is True
    assert b.step() is False
    for _ in range(10):  # a renews every 3 s; b never takes over
        ca.t += 3
        cb.t += 3
        assert a.step() is True
        assert b.step() is False
        assert a.leading
        assert not b.leading
    # a dies: b sees no change for 12 s of its own clock, then takes over (not before)
    cb.t += 11.9
    assert b.step() is False
    cb.t += 0.2
    assert b.step() is True
    assert store.rec is not None
    assert (store.rec.holder, store.rec.transitions) == ("b", 1)


def test_a_paused_leader_acts_on_nothing_when_it_wakes() -> None:
    store, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(store, "a", ca), elector(store, "b", cb)
    assert a.step()
    assert b.step() is False
    ca.t += 30  # SIGSTOP for 30 s; meanwhile b takes over
    cb.t += 13
    assert b.step()
    assert not a.leading  # before it even tries to renew: its last renew is too old
    assert a.step() is False  # and the Lease is b's now
    assert b.leading


def test_a_leader_that_cannot_renew_stops_before_a_standby_may_start() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, "a", clock)
    assert a.step()
    store.down = True
    clock.t += 8.9
    assert a.step() is True  # within the renew deadline (12 - 3 = 9 s)
    clock.t += 0.2
    assert a.step() is False  # past it: stop acting, 3 s before anyone may take over
    store.down = False
    assert a.step() is True  # it still holds the Lease: renewed, leading again


class StaleReads(FakeLeases):
    """A replica whose read happened just before another replica's write."""

    def __init__(self, real: FakeLeases, stale: LeaseRecord) -> None:
        self.real, self.stale = real, stale

    def get(self) -> LeaseRecord | None:
        return self.stale

    def replace(self, rec: LeaseRecord) -> LeaseRecord:
        return self.real.replace(rec)


def test_two_standbys_race_and_one_wins() -> None:
    store, ca, cb, cc = FakeLeases(), Clock(), Clock(), Clock()
    a, b = elector(store, "a", ca), elector(store, "b", cb)
    assert a.step()
    old = store.get()
    assert old is not None
    c = elector(StaleReads(store, old), "c", cc)
    b.step()
    c.step()
    cb.t += 12.5
    cc.t += 12.5
    assert b.step() is True  # b takes over from a's stale lease
    assert c.step() is False  # c decided from the same version: its write is a 409
    assert store.rec is not None
    assert (store.rec.holder, store.rec.transitions) == ("b", 1)


def test_release_hands_over_at_once() -> None:
    store, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(store, "a", ca), elector(store, "b", cb)
    changes: list[bool] = []
    a.on_change = changes.append
    assert a.step()
    assert b.step() is False
    a.release()
    assert changes == [True, False]
    assert b.step() is True  # an empty holder is free, no need to wait a lease


def test_renew_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_s"):
        LeaderElector(FakeLeases(), "a", duration_s=3, renew_s=3)
