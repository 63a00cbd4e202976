"""The outbox store (ledger.outbox) over SQLite and a real PostgreSQL: a notice is recorded
once per (tenant, key), however often and from however many replicas it is recorded, and a
delivery's state only moves forward."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from kubemeter_operator.errors import InputError
from kubemeter_operator.ledger import Ledger, Notice
from kubemeter_operator.ledger.outbox import notice_id

from support.postgres import ledger_url, postgres_url  # noqa: F401  (fixtures)
from support.webhooks import T0, Clock

pytestmark = pytest.mark.integration


def notice(key: str = "2026-11/threshold/80", tenant: str = "acme", **kw: object) -> Notice:
    fields: dict[str, object] = {
        "type": "BudgetThresholdCrossed",
        "message": f"{tenant} {key}",
        "data": {"threshold": 80, "spent": Decimal("812.5")},
        "period": "2026-11",
        "webhook": True,
        **kw,
    }
    return Notice(tenant, key, **fields)  # type: ignore[arg-type]


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:  # noqa: F811
    led = Ledger.open(ledger_url, clock=clock)
    try:
        yield led
    finally:
        led.close()


def test_the_same_notice_recorded_twice_is_stored_once_and_the_first_wins(
    ledger: Ledger, clock: Clock
) -> None:
    first = notice()
    assert ledger.record_notices([first, first]) == [first]
    clock.now = T0 + timedelta(hours=1)
    later = notice(message="another text", data={"threshold": 80, "spent": "900"})
    assert ledger.record_notices([later]) == []
    (row,) = ledger.notices()
    assert row.id == first.id == notice_id("acme", "2026-11/threshold/80")
    assert (row.message, row.data, row.created_at) == (first.message, {"threshold": 80,
                                                       "spent": "812.5"}, T0)  # fmt: skip
    assert (row.event_state, row.webhook_state, row.attempts, row.next_attempt_at) == (
        "pending", "pending", 0, T0
    )  # fmt: skip


def test_the_same_key_of_another_tenant_is_another_notice(ledger: Ledger) -> None:
    a, b = notice(tenant="acme"), notice(tenant="globex")
    assert ledger.record_notices([a, b]) == [a, b]
    assert a.id != b.id


def test_concurrent_recordings_from_two_ledgers_store_it_once(ledger_url: str) -> None:  # noqa: F811
    ledgers = [Ledger.open(ledger_url) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(ledgers))
        results: list[list[Notice]] = [[] for _ in ledgers]
        errors: list[BaseException] = []

        def record(i: int) -> None:
            try:
                for k in range(20):
                    barrier.wait(timeout=30)
                    results[i] += ledgers[i].record_notices(
                        [notice(f"2026-11/threshold/{k}"), notice("2026-11/exceeded")]
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=record, args=(i,)) for i in range(len(ledgers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        inserted = [n.key for r in results for n in r]
        assert sorted(inserted) == sorted(
            [f"2026-11/threshold/{k}" for k in range(20)] + ["2026-11/exceeded"]
        )
        assert len(ledgers[0].notices()) == 21
    finally:
        for led in ledgers:
            led.close()


def test_notices_recorded_in_a_transaction_roll_back_with_it(ledger: Ledger) -> None:
    n = notice("suspension/s1/suspended", type="WorkloadsSuspended")

    def suspend_and_fail() -> None:
        with ledger.transaction("suspend") as tx:
            assert tx.record_notices([n]) == [n]
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        suspend_and_fail()
    assert ledger.notices() == []
    with ledger.transaction("suspend") as tx:
        assert tx.record_notices([n]) == [n]
    assert [r.key for r in ledger.notices()] == ["suspension/s1/suspended"]


def test_notice_keys_match_a_literal_prefix(ledger: Ledger) -> None:
    ledger.record_notices(
        [notice("2026-11/threshold/50"), notice("2026-11/threshold/80"),
         notice("2026-11_threshold/x"), notice("2026-12/threshold/50"),
         notice("2026-11/threshold/50", tenant="globex")]
    )  # fmt: skip
    assert ledger.notice_keys("acme", "2026-11/threshold/") == {
        "2026-11/threshold/50",
        "2026-11/threshold/80",
    }
    assert ledger.notice_keys("acme", "2026_11") == set()  # `_` is not a wildcard
    assert len(ledger.notice_keys("acme")) == 4


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": {"ratio": 0.8}}, "data"),
        ({"data": {"when": {1, 2}}}, "data"),
        ({"severity": "Error"}, "severity"),
        ({"period": "2026-13"}, "period"),
        ({"type": "budget exceeded"}, "type"),
    ],
)
def test_a_bad_notice_is_refused_and_nothing_is_written(
    ledger: Ledger, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InputError, match=field):
        ledger.record_notices([notice("2026-11/ok"), notice(**changes)])  # type: ignore[arg-type]
    assert ledger.notices() == []


def test_due_webhooks_are_pending_rows_due_by_now_oldest_first(
    ledger: Ledger, clock: Clock
) -> None:
    old, new = notice("a/old", tenant="zeta"), notice("b/new", tenant="alpha")
    ledger.record_notices([old])
    clock.now = T0 + timedelta(seconds=1)
    ledger.record_notices([new, notice("c/none", webhook=False)])
    assert ledger.due_webhooks(T0 - timedelta(seconds=1)) == []
    assert [r.id for r in ledger.due_webhooks(T0)] == [old.id]
    assert [r.id for r in ledger.due_webhooks(clock.now)] == [old.id, new.id]
    assert [r.id for r in ledger.due_webhooks(clock.now, limit=1)] == [old.id]
    ledger.record_attempt(old.id, clock.now, delivered=False, error="HTTP 500",
                          next_attempt_at=clock.now + timedelta(seconds=5))  # fmt: skip
    assert [r.id for r in ledger.due_webhooks(clock.now)] == [new.id]
    assert [r.id for r in ledger.due_webhooks(clock.now + timedelta(seconds=5))] == [
        old.id,
        new.id,
    ]


def test_a_delivered_row_never_goes_back_to_pending(ledger: Ledger) -> None:
    n = notice()
    ledger.record_notices([n])
    later = T0 + timedelta(seconds=30)
    assert ledger.record_attempt(n.id, T0, delivered=True)
    # A slower replica's failure of the same attempt, and a dead-letter, change nothing.
    assert not ledger.record_attempt(n.id, T0, delivered=False, error="timeout",
                                     next_attempt_at=later)  # fmt: skip
    assert not ledger.record_attempt(n.id, T0, delivered=False, error="timeout")
    assert not ledger.dead_letter(n.id, T0, "webhook removed")
    row = ledger.notice(n.id)
    assert row is not None
    assert (row.webhook_state, row.attempts, row.delivered_at, row.last_error) == (
        "delivered", 1, T0, None
    )  # fmt: skip
    assert ledger.due_webhooks(later) == []


def test_two_replicas_failing_the_same_attempt_count_it_once(ledger: Ledger) -> None:
    n = notice()
    ledger.record_notices([n])
    (row,) = ledger.due_webhooks(T0)
    nxt = T0 + timedelta(seconds=5)
    assert ledger.record_attempt(n.id, T0, delivered=False, error="HTTP 500",
                                 next_attempt_at=nxt, seen_attempts=row.attempts)  # fmt: skip
    assert not ledger.record_attempt(n.id, T0, delivered=False, error="HTTP 502",
                                     next_attempt_at=nxt, seen_attempts=row.attempts)  # fmt: skip
    # ...but a delivery reported by the other replica still wins.
    assert ledger.record_attempt(n.id, T0, delivered=True)
    stored = ledger.notice(n.id)
    assert stored is not None
    assert (stored.attempts, stored.webhook_state) == (2, "delivered")


def test_delivery_summaries_show_each_tenants_latest_attempt_and_dead_letters(
    ledger: Ledger,
) -> None:
    a1, a2, a3 = notice("k1"), notice("k2"), notice("k3")
    g1 = notice("k1", tenant="globex")
    ledger.record_notices([a1, a2, a3, g1, notice("k4", tenant="initech")])
    t = [T0 + timedelta(seconds=s) for s in range(5)]
    ledger.record_attempt(a1.id, t[1], delivered=False, error="HTTP 500")  # dead
    ledger.record_attempt(a2.id, t[3], delivered=False, error="HTTP 503", next_attempt_at=t[4])
    ledger.record_attempt(a3.id, t[2], delivered=True)
    ledger.dead_letter(g1.id, t[1], "not sent: the Tenant no longer exists")
    summaries = ledger.delivery_summaries()
    assert set(summaries) == {"acme", "globex"}  # initech: nothing attempted yet
    acme = summaries["acme"]
    assert (acme.event_id, acme.state, acme.attempts, acme.at, acme.error, acme.dead_letters) == (
        a2.id, "retrying", 1, t[3], "HTTP 503", 1
    )  # fmt: skip
    globex = summaries["globex"]
    assert (globex.state, globex.attempts, globex.dead_letters) == ("dead", 0, 1)


def test_events_are_pending_until_marked_posted(ledger: Ledger) -> None:
    a, b = notice("k1", webhook=False), notice("k2")
    ledger.record_notices([a, b])
    assert {r.id for r in ledger.pending_events()} == {a.id, b.id}
    assert ledger.mark_events_posted([a.id, a.id]) == 1
    assert ledger.mark_events_posted([a.id]) == 0
    assert [r.id for r in ledger.pending_events()] == [b.id]
