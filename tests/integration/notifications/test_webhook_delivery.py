"""Webhook delivery from the ledger's outbox to a real HTTP receiver on 127.0.0.1, over
SQLite and a real PostgreSQL: at least once, the same id and bytes on every attempt,
backoff, dead letters, and Kubernetes Events posted once per notice.

Time is an input of `Notifier.run_once`: each test moves it forward between passes. The
receiver checks signatures with the README's own example (support/webhooks.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import TransientError
from kubemeter_operator.ledger import Ledger, Notice
from kubemeter_operator.notifications.delivery import Notifier, PassReport, RetryPolicy
from kubemeter_operator.notifications.metrics import NotificationMetrics

from support.postgres import ledger_url, postgres_url  # noqa: F401  (fixtures)
from support.webhooks import T0, Clock, Receiver, RecordingPoster, Secrets, tenant

pytestmark = pytest.mark.integration

POLICY = RetryPolicy(timeout_s=0.5, max_attempts=4, backoff_s=5, backoff_max_s=15)
"""Attempts at +0 s, +5 s, +15 s, +30 s (the last wait capped at 15 s), then dead."""
SECRET = b"whsec-acme-4f1c0a9e77d24d2b8e1b"


def threshold(tenant_name: str, pct: int = 80, *, webhook: bool = True) -> Notice:
    return Notice(
        tenant_name,
        f"2026-11/threshold/{pct}",
        "BudgetThresholdCrossed",
        f"tenant {tenant_name} reached {pct}% of its budget for 2026-11: spent 812.5 USD",
        {"threshold": pct, "spent": Decimal("812.50"), "limit": Decimal(1000), "currency": "USD"},
        period="2026-11",
        webhook=webhook,
    )


class Harness:
    """A ledger, a notifier and its metrics; `at(seconds)` runs one pass at T0 + seconds."""

    def __init__(self, url: str, clock: Clock, receiver: Receiver, secrets: Secrets) -> None:
        self.url, self.clock, self.receiver, self.secrets = url, clock, receiver, secrets
        self.registry = CollectorRegistry()
        self.metrics = NotificationMetrics(self.registry)
        self.poster = RecordingPoster()
        self.ledger = Ledger.open(url, clock=clock)
        self.opened = [self.ledger]
        self.notifier = self.fresh_notifier()
        self.tenants: dict[str, Tenant] = {}

    def fresh_notifier(self, ledger: Any = None) -> Notifier:
        return Notifier(
            ledger or self.ledger, self.poster, self.secrets, policy=POLICY, metrics=self.metrics
        )

    def restart(self) -> None:
        """A new process: a new ledger connection and notifier (same metrics registry)."""
        self.ledger = Ledger.open(self.url, clock=self.clock)
        self.opened.append(self.ledger)
        self.notifier = self.fresh_notifier()

    def at(self, seconds: float, notifier: Notifier | None = None) -> PassReport:
        now = T0 + timedelta(seconds=seconds)
        self.receiver.now = now.timestamp()
        return asyncio.run((notifier or self.notifier).run_once(now, self.tenants))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def close(self) -> None:
        for ledger in self.opened:
            ledger.close()


@pytest.fixture
def harness(ledger_url: str, clock: Clock, receiver: Receiver) -> Iterator[Harness]:  # noqa: F811
    h = Harness(ledger_url, clock, receiver, Secrets())
    try:
        yield h
    finally:
        h.close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_notice_is_accepted_once_after_a_500_and_a_timeout_same_id_and_bytes_each_time(
    harness: Harness, receiver: Receiver
) -> None:
    harness.secrets.put("acme-webhook", b"  " + SECRET + b"\n")  # surrounding space: trimmed
    url = receiver.endpoint("acme", "fail", "hang", "accept", secret=SECRET)
    harness.tenants["acme"] = tenant("acme", url, secret="acme-webhook")
    notice = threshold("acme")
    assert harness.ledger.record_notices([notice]) == [notice]
    requests = receiver.requests("acme")

    report = harness.at(0)  # 1st attempt: HTTP 500
    assert (report.events_posted, report.failed, len(requests)) == (1, 1, 1)
    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert row.attempts == 1
    assert row.next_attempt_at == at(5)
    assert row.last_error is not None
    assert row.last_error.startswith("HTTP 500: receiver broken")
    assert len(row.last_error) <= 300
    assert harness.ledger.delivery_summaries()["acme"].state == "retrying"

    harness.at(4.9)  # backoff: not due yet
    assert len(requests) == 1

    started = time.monotonic()
    report = harness.at(5)  # 2nd attempt: the receiver hangs past the timeout
    assert time.monotonic() - started < receiver.hang_s
    assert (report.failed, len(requests)) == (1, 2)
    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert (row.attempts, row.next_attempt_at, row.last_error) == (
        2, at(15), "no answer within 0.5s"
    )  # fmt: skip

    harness.at(14)
    assert len(requests) == 2
    report = harness.at(15)  # 3rd attempt: accepted
    assert (report.delivered, len(requests)) == (1, 3)

    # Recorded again (the next cycle, a restart, another replica): nothing new.
    assert harness.ledger.record_notices([notice]) == []
    harness.at(100)
    harness.restart()
    report = harness.at(1000)
    assert (report.events_posted, report.delivered, report.failed) == (0, 0, 0)
    assert len(requests) == 3

    assert {r.event["id"] for r in requests} == {notice.id}
    assert len({r.body for r in requests}) == 1  # identical bytes on every attempt
    assert [r.signed for r in requests] == [True, True, True]  # verified by the README code
    stamps = [r.headers["X-Kubemeter-Signature"].split(",")[0] for r in requests]
    assert stamps == [f"t={int(at(s).timestamp())}" for s in (0, 5, 15)]  # the attempt's time
    assert {r.headers["Content-Type"] for r in requests} == {
        "application/cloudevents+json; charset=utf-8"
    }
    event = requests[0].event
    assert event["type"] == "dev.kubemeter.BudgetThresholdCrossed"
    assert event["data"]["spent"] == "812.5"
    assert event["data"]["tenant"] == "acme"
    assert dict(receiver.endpoints["acme"].accepted) == {notice.id: 1}

    assert harness.poster.events == [("acme", "BudgetThresholdCrossed", notice.message, "Warning")]

    summary = harness.ledger.delivery_summaries()["acme"]
    assert (summary.event_id, summary.state, summary.attempts, summary.at, summary.error) == (
        notice.id, "delivered", 3, at(15), None
    )  # fmt: skip
    assert summary.dead_letters == 0
    deliveries = "kubemeter_webhook_deliveries_total"
    assert harness.sample(deliveries, tenant="acme", outcome="failed") == 2
    assert harness.sample(deliveries, tenant="acme", outcome="delivered") == 1
    state = "kubemeter_webhook_last_delivery_state"
    assert harness.sample(state, tenant="acme", state="delivered") == 1
    assert harness.sample(state, tenant="acme", state="retrying") == 0
    assert harness.sample("kubemeter_webhook_dead_letters", tenant="acme") == 0


def test_a_receiver_that_never_accepts_is_dead_lettered_after_max_attempts(
    harness: Harness, receiver: Receiver
) -> None:
    harness.tenants["globex"] = tenant("globex", receiver.endpoint("globex", "fail"))
    notice = threshold("globex")
    harness.ledger.record_notices([notice])
    requests = receiver.requests("globex")

    for attempt, (due, before) in enumerate([(0, None), (5, 4.9), (15, 14.9), (30, 29.9)], 1):
        if before is not None:
            harness.at(before)
            assert len(requests) == attempt - 1, f"attempt {attempt} came before {due}s"
        harness.at(due)
        assert len(requests) == attempt
    harness.at(10_000)
    assert len(requests) == POLICY.max_attempts

    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert (row.webhook_state, row.attempts, row.next_attempt_at) == ("dead", 4, None)
    summary = harness.ledger.delivery_summaries()["globex"]
    assert (summary.state, summary.attempts, summary.dead_letters, summary.at) == (
        "dead", 4, 1, at(30)
    )  # fmt: skip
    assert summary.error is not None
    assert summary.error.startswith("HTTP 500")
    assert all("X-Kubemeter-Signature" not in r.headers for r in requests)  # no secretRef
    assert {r.event["id"] for r in requests} == {notice.id}

    deliveries = "kubemeter_webhook_deliveries_total"
    assert harness.sample(deliveries, tenant="globex", outcome="failed") == 3
    assert harness.sample(deliveries, tenant="globex", outcome="dead") == 1
    assert harness.sample("kubemeter_webhook_dead_letters", tenant="globex") == 1
    state = "kubemeter_webhook_last_delivery_state"
    assert harness.sample(state, tenant="globex", state="dead") == 1
    assert harness.sample(state, tenant="globex", state="delivered") == 0

    # The metric comes from the ledger: a restarted operator shows the same.
    harness.restart()
    fresh = CollectorRegistry()
    asyncio.run(
        Notifier(
            harness.ledger, RecordingPoster(), harness.secrets, metrics=NotificationMetrics(fresh)
        ).run_once(at(20_000), harness.tenants)
    )
    assert fresh.get_sample_value("kubemeter_webhook_dead_letters", {"tenant": "globex"}) == 1


class CrashBeforeRecord:
    """The ledger of an operator that dies after the POST, before recording the attempt."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def record_attempt(self, *args: Any, **kwargs: Any) -> bool:
        raise TransientError("the operator died here")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def test_a_crash_after_the_receiver_accepted_sends_the_same_id_and_bytes_again(
    harness: Harness, receiver: Receiver
) -> None:
    harness.secrets.put("initech-webhook", SECRET)
    url = receiver.endpoint("initech", "accept", secret=SECRET)
    harness.tenants["initech"] = tenant("initech", url, secret="initech-webhook")
    notice = threshold("initech", 50)
    harness.ledger.record_notices([notice])

    with pytest.raises(TransientError):
        harness.at(0, harness.fresh_notifier(CrashBeforeRecord(harness.ledger)))
    harness.restart()
    report = harness.at(1)
    assert report.delivered == 1

    requests = receiver.requests("initech")
    assert len(requests) == 2
    assert requests[0].body == requests[1].body
    assert all(r.signed for r in requests)
    assert dict(receiver.endpoints["initech"].accepted) == {notice.id: 2}
    # The receiver saw the id twice and kept the first (204), answering the repeat 200.
    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert (row.webhook_state, row.attempts, row.delivered_at) == ("delivered", 1, at(1))


def test_a_hanging_receiver_delays_neither_other_tenants_nor_the_pass(
    harness: Harness, receiver: Receiver
) -> None:
    for i in range(4):
        name = f"a-slow-{i}"
        harness.tenants[name] = tenant(name, receiver.endpoint(name, "hang"))
        harness.ledger.record_notices([threshold(name, 50), threshold(name, 80)])
    harness.tenants["b-fast"] = tenant("b-fast", receiver.endpoint("b-fast", "accept"))
    harness.ledger.record_notices([threshold("b-fast", 50), threshold("b-fast", 80)])

    started = time.monotonic()
    report = harness.at(0)
    elapsed = time.monotonic() - started
    assert elapsed < 2 * POLICY.timeout_s + 0.5, elapsed  # the four timeouts ran at once
    assert report.delivered == 2
    assert report.failed == 4
    # A failing receiver's turn ends at its first failure: its second notice waits.
    for i in range(4):
        assert len(receiver.requests(f"a-slow-{i}")) == 1
    harness.at(1)
    for i in range(4):
        assert len(receiver.requests(f"a-slow-{i}")) == 2


def test_a_redirect_is_not_followed(harness: Harness, receiver: Receiver) -> None:
    harness.tenants["moved"] = tenant("moved", receiver.endpoint("moved", "redirect"))
    notice = threshold("moved")
    harness.ledger.record_notices([notice])
    harness.at(0)
    assert len(receiver.requests("moved")) == 1
    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert row.webhook_state == "pending"
    assert row.last_error is not None
    assert "HTTP 307" in row.last_error
    assert "redirects are not followed" in row.last_error


def test_a_missing_signing_secret_sends_nothing_until_it_exists(
    harness: Harness, receiver: Receiver
) -> None:
    url = receiver.endpoint("hooli", "accept", secret=SECRET)
    harness.tenants["hooli"] = tenant("hooli", url, secret="hooli-webhook")
    first, second = threshold("hooli", 50), threshold("hooli", 80)
    harness.ledger.record_notices([first, second])

    harness.at(0)
    assert receiver.requests("hooli") == []  # never unsigned instead
    row = harness.ledger.notice(first.id)
    assert row is not None
    assert row.last_error == "not sent: signing secret kubemeter/hooli-webhook not found"
    assert row.attempts == 1

    harness.secrets.put("hooli-webhook", b" \n")
    harness.at(1)  # the second notice's first attempt: the key is empty
    row = harness.ledger.notice(second.id)
    assert row is not None
    assert row.last_error is not None
    assert "no usable (non-empty) key 'token'" in row.last_error

    harness.secrets.put("hooli-webhook", SECRET)
    reads = harness.secrets.reads
    report = harness.at(6)  # both due again (failed at 0 s and 1 s)
    assert report.delivered == 2
    assert harness.secrets.reads == reads + 1  # read once per pass, not per delivery
    assert [r.signed for r in receiver.requests("hooli")] == [True, True]


def test_deliveries_to_a_deleted_tenant_or_a_removed_webhook_are_dead_lettered_unsent(
    harness: Harness, receiver: Receiver
) -> None:
    gone, quiet = threshold("gone"), threshold("quiet")
    unannounced = threshold("quiet", 90, webhook=False)  # no webhook when it was recorded
    harness.ledger.record_notices([gone, quiet, unannounced])
    harness.tenants["quiet"] = tenant("quiet")  # spec.notification removed since

    report = harness.at(0)
    assert report.dead == 2
    assert report.events_skipped == 1  # the deleted tenant's Event
    assert [e[0] for e in harness.poster.events] == ["quiet", "quiet"]
    assert harness.ledger.pending_events() == []

    rows = {r.id: r for r in harness.ledger.notices()}
    assert rows[gone.id].webhook_state == "dead"
    assert rows[gone.id].attempts == 0
    assert rows[gone.id].last_error == "not sent: the Tenant no longer exists"
    assert rows[quiet.id].webhook_state == "dead"
    assert "no longer names a webhook" in (rows[quiet.id].last_error or "")
    assert rows[unannounced.id].webhook_state == "none"
    summaries = harness.ledger.delivery_summaries()
    assert summaries["gone"].state == "dead"
    assert summaries["quiet"].dead_letters == 1


class FlakyPoster(RecordingPoster):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("API server unavailable")
        await super().post_event(obj, reason=reason, message=message, type_=type_)


def test_an_event_the_api_server_refused_is_posted_on_a_later_pass_once(
    harness: Harness,
) -> None:
    harness.tenants["acme"] = tenant("acme")
    a, b = threshold("acme", 50, webhook=False), threshold("acme", 80, webhook=False)
    harness.ledger.record_notices([a, b])
    poster = FlakyPoster(failures=1)
    notifier = Notifier(harness.ledger, poster, harness.secrets, policy=POLICY)

    report = harness.at(0, notifier)
    assert (report.events_posted, report.events_failed, poster.events) == (0, 1, [])
    assert len(harness.ledger.pending_events()) == 2
    harness.at(1, notifier)
    harness.at(2, notifier)
    assert sorted(e[2] for e in poster.events) == [a.message, b.message]


def test_a_secret_the_api_server_cannot_give_fails_the_attempt_and_is_read_again(
    harness: Harness, receiver: Receiver
) -> None:
    url = receiver.endpoint("umbrella", "accept", secret=SECRET)
    harness.tenants["umbrella"] = tenant("umbrella", url, secret="umbrella-webhook")
    notice = threshold("umbrella")
    harness.ledger.record_notices([notice])

    def unavailable(namespace: str, name: str) -> dict[str, str] | None:
        raise TransientError(f"reading secret {namespace}/{name}: Service Unavailable")

    harness.at(0, Notifier(harness.ledger, harness.poster, unavailable, policy=POLICY))
    row = harness.ledger.notice(notice.id)
    assert row is not None
    assert (row.attempts, row.webhook_state) == (1, "pending")
    assert row.last_error == (
        "not sent: cannot read the signing secret: reading secret kubemeter/umbrella-webhook: "
        "Service Unavailable"
    )
    assert receiver.requests("umbrella") == []
    harness.secrets.put("umbrella-webhook", SECRET)
    assert harness.at(5).delivered == 1


def notice_of(tenant_name: str, period: str, *, webhook: bool = False) -> Notice:
    return Notice(
        tenant_name, f"{period}/exceeded", "BudgetExceeded",
        f"tenant {tenant_name} spent its budget for {period}",
        {"spent": Decimal(12), "limit": Decimal(10), "currency": "USD"},
        period=period, webhook=webhook,
    )  # fmt: skip


def test_finished_notices_of_old_periods_are_pruned_once_per_period_unfinished_ones_kept(
    harness: Harness, receiver: Receiver
) -> None:
    """Retention: this period and the two before stay; older rows go once they are
    finished; a delivery still retrying is kept whatever its age; the retention runs on
    the first pass of a period, not every pass."""
    harness.tenants["acme"] = tenant("acme", receiver.endpoint("acme", "fail"))
    periods = ["2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]
    done = [notice_of("acme", p) for p in periods]  # Events only: finished once posted
    retrying = notice_of("initech", "2026-07", webhook=True)
    harness.tenants["initech"] = tenant("initech", receiver.endpoint("initech", "fail"))
    harness.ledger.record_notices([*done, retrying])

    first = harness.at(0)  # T0 is in 2026-11: keeps 2026-09 and later
    assert first.events_posted == 6
    assert first.pruned == 2  # acme's 2026-07 and 2026-08, once their Events were posted
    assert {r.period for r in harness.ledger.notices("acme")} == {"2026-09", "2026-10", "2026-11"}
    (kept,) = harness.ledger.notices("initech")
    assert (kept.id, kept.webhook_state) == (retrying.id, "pending")
    assert harness.at(1).pruned == 0  # the same period: not run again

    harness.restart()  # a new process prunes on its first pass: nothing left to prune
    assert harness.at(2).pruned == 0

    # A notice already recorded in a kept period is still recorded once.
    assert harness.ledger.record_notices([done[-1]]) == []

    # The next period moves the line by one; the dead-lettered delivery then goes too.
    for t in (10, 100, 1_000):  # initech's attempts 2 to 4: dead
        harness.at(t)
    assert harness.ledger.notice(retrying.id).webhook_state == "dead"  # type: ignore[union-attr]
    december = harness.at((datetime(2026, 12, 1, tzinfo=T0.tzinfo) - T0).total_seconds())
    assert december.pruned == 2  # acme's 2026-09 and initech's dead 2026-07
    assert {r.period for r in harness.ledger.notices("acme")} == {"2026-10", "2026-11"}
    assert harness.ledger.notices("initech") == []
    assert harness.ledger.delivery_summaries() == {}


def test_retention_keeps_at_least_the_previous_period() -> None:
    with pytest.raises(ValueError, match="retention_periods"):
        Notifier(None, RecordingPoster(), Secrets(), retention_periods=1)  # type: ignore[arg-type]
