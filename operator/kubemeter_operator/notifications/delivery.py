"""Delivering the outbox: Kubernetes Events and signed CloudEvents webhooks, at least once.

    notifier = Notifier(ledger, kube_writer, read_secret, policy=RetryPolicy(...))
    report = await notifier.run_once(now, tenants)   # every cycle, on the leader

The controller decides what to announce and records it (`LedgerTx.record_notices`); this
module only delivers what the ledger holds, so a restart, a failover or a fresh Notifier
carries on where the last one stopped. One pass (`run_once`):

1. Events. Every notice whose Event is not marked posted is posted on its Tenant (reason =
   the notice type, message, Normal or Warning), then marked posted. A crash in between
   posts it again (at least once). A notice of a Tenant that no longer exists is marked
   posted unposted. The API server unavailable (TransientError) ends this part of the
   pass; any other failure leaves that notice for the next pass and goes on.
2. Webhooks. Every delivery due at `now` is POSTed to the Tenant's current
   `spec.notification.webhookUrl`: the body is `cloudevents.envelope_bytes(row)`
   (identical on every attempt), `Content-Type: application/cloudevents+json`, and, when
   the Tenant names `secretRef`, `X-Kubemeter-Signature` (`signing`, the attempt's time).
   Redirects are not followed; a 2xx answer within `timeout_s` is delivered; anything else
   (another status, a timeout, a connection error, the signing Secret missing) is a failed
   attempt, retried after `backoff_s * 2**(attempts - 1)` (at most `backoff_max_s`) until
   `max_attempts`, then dead-lettered. Without a `secretRef` the body is sent unsigned; with
   one whose Secret or key is missing or empty nothing is sent (never unsigned instead) and
   the attempt fails with that reason. A delivery whose Tenant is gone or no longer names a
   webhook is dead-lettered unsent.
   Tenants are served concurrently (at most `concurrency` at once); one tenant's deliveries
   run in order, and its first failure ends its turn in this pass, so a receiver that is
   down or hangs costs one timeout per pass and never delays other tenants' receivers.
3. Retention, on the first pass of each period (and of each start): the finished notices
   (Event posted, webhook delivered, dead or unwanted) of periods older than
   `retention_periods` (default 3: this period and the two before) are deleted
   (`ledger.outbox.prune`); dead letters count in the metrics until then.
4. The delivery summaries (per tenant: the latest delivery and the dead letters) are read
   back from the ledger, set on the metrics and returned, for status.notification.

Every attempt is recorded after it is made, compare-and-set (`ledger.outbox`): a crash
before the record repeats the attempt with the same id and body; two replicas racing count
one attempt and never move a delivered row back. `now` is an input, so tests move time.

Never log a secret or a signature, never follow a redirect, and never read more than a
small bounded part of a receiver's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp

from kubemeter_operator.api.tenant import Notification, Tenant
from kubemeter_operator.errors import TransientError
from kubemeter_operator.kube.secrets import SecretReader, secret_value
from kubemeter_operator.ledger import DeliverySummary, Ledger, OutboxRow
from kubemeter_operator.notifications import cloudevents, signing
from kubemeter_operator.notifications.metrics import AttemptOutcome, NotificationMetrics
from kubemeter_operator.usage import Period

log = logging.getLogger(__name__)

USER_AGENT = "kubemeter-operator"
_ANSWER_BYTES = 512  # of a failed answer, kept (as text) in the error


class EventPoster(Protocol):
    """Posts a core/v1 Event about an object (`kube.client.KubeWriter`)."""

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Per attempt `timeout_s`; at most `max_attempts`; the wait after the n-th failure is
    `backoff_s * 2**(n - 1)`, at most `backoff_max_s` (OperatorConfig.webhook_*)."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 5.0
    backoff_max_s: float = 600.0

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.backoff_s > 0 and self.backoff_max_s > 0):
            raise ValueError("timeout_s, backoff_s and backoff_max_s must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, failures: int) -> timedelta:
        """The wait after the `failures`-th failed attempt (1, 2, ...)."""
        if failures < 1:
            raise ValueError("failures must be at least 1")
        seconds = self.backoff_s * 2.0 ** min(failures - 1, 64)  # the cap applies long before
        return timedelta(seconds=min(seconds, self.backoff_max_s))

    def next_attempt(self, attempts: int, now: datetime) -> datetime | None:
        """After a failed attempt that was the `attempts`-th: when to try again, or None
        (dead-letter) when that was the last one allowed."""
        if attempts >= self.max_attempts:
            return None
        return now + self.delay(attempts)


@dataclass
class PassReport:
    """What one `run_once` did, and the delivery summaries for status.notification."""

    events_posted: int = 0
    events_skipped: int = 0
    events_failed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    pruned: int = 0
    """Finished notices of old periods deleted (retention), on the first pass of a period."""
    summaries: dict[str, DeliverySummary] = field(default_factory=dict)


@dataclass(frozen=True)
class _Attempt:
    outcome: AttemptOutcome
    error: str | None = None


def _body(tenant: Tenant) -> dict[str, Any]:
    return {"apiVersion": tenant.api_version, "kind": tenant.kind, "metadata": tenant.metadata}


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Notifier:
    """Delivers the ledger's outbox (see the module docstring). One per operator; run it
    on the leader only (a standby that runs it too is safe, just wasteful)."""

    def __init__(
        self,
        ledger: Ledger,
        poster: EventPoster,
        read_secret: SecretReader,
        *,
        policy: RetryPolicy | None = None,
        metrics: NotificationMetrics | None = None,
        concurrency: int = 16,
        event_batch: int = 500,
        webhook_batch: int = 200,
        retention_periods: int = 3,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retention_periods < 2:
            # the previous period's notices are still read (a suspension restored by the
            # new period announces under its own period)
            raise ValueError("retention_periods must be at least 2")
        self.ledger = ledger
        self.poster = poster
        self.read_secret = read_secret
        self.policy = policy or RetryPolicy()
        self.metrics = metrics
        self.concurrency = concurrency
        self.event_batch = event_batch
        self.webhook_batch = webhook_batch
        self.retention_periods = retention_periods
        self._pruned_before: str | None = None

    async def run_once(self, now: datetime, tenants: Mapping[str, Tenant]) -> PassReport:
        """One pass: post pending Events, attempt due webhooks, read the summaries back.

        `tenants`: every Tenant that exists now, by name (complete: a notice of a tenant
        not in it is treated as one of a deleted Tenant)."""
        report = PassReport()
        await self._post_events(tenants, report)
        await self._deliver_webhooks(now, tenants, report)
        await self._prune(now, report)
        report.summaries = await asyncio.to_thread(self.ledger.delivery_summaries)
        if self.metrics is not None:
            self.metrics.observe(report.summaries)
        return report

    async def _prune(self, now: datetime, report: PassReport) -> None:
        """Once per period (and once per start): delete the finished notices older than
        `retention_periods` periods, the current one included."""
        before = Period.of(now)
        for _ in range(self.retention_periods - 1):
            before = before.previous()
        if str(before) == self._pruned_before:
            return
        report.pruned = await asyncio.to_thread(self.ledger.prune_notices, before)
        self._pruned_before = str(before)

    # -- Kubernetes Events ---------------------------------------------------------------

    async def _post_events(self, tenants: Mapping[str, Tenant], report: PassReport) -> None:
        rows = await asyncio.to_thread(self.ledger.pending_events, self.event_batch)
        done: list[str] = []
        try:
            for row in rows:
                tenant = tenants.get(row.tenant)
                if tenant is None:
                    done.append(row.id)
                    report.events_skipped += 1
                    continue
                try:
                    await self.poster.post_event(
                        _body(tenant), reason=row.type, message=row.message, type_=row.severity
                    )
                except TransientError as exc:
                    report.events_failed += 1
                    log.warning("cannot post Events now (retrying next pass): %s", exc)
                    break
                except Exception as exc:
                    report.events_failed += 1
                    log.warning("posting Event %s on %s failed: %s", row.type, row.tenant, exc)
                    continue
                done.append(row.id)
                report.events_posted += 1
        finally:
            if done:
                await asyncio.to_thread(self.ledger.mark_events_posted, done)
            if self.metrics is not None:
                self.metrics.event("posted", report.events_posted)
                self.metrics.event("skipped", report.events_skipped)
                self.metrics.event("failed", report.events_failed)

    # -- webhooks ------------------------------------------------------------------------

    async def _deliver_webhooks(
        self, now: datetime, tenants: Mapping[str, Tenant], report: PassReport
    ) -> None:
        rows = await asyncio.to_thread(self.ledger.due_webhooks, now, self.webhook_batch)
        if not rows:
            return
        by_tenant: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            by_tenant[row.tenant].append(row)
        secrets = _SecretCache(self.read_secret)
        gate = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers={"User-Agent": USER_AGENT}
        ) as session:

            async def turn(name: str, queue: Sequence[OutboxRow]) -> None:
                async with gate:
                    await self._tenant_turn(session, secrets, now, tenants.get(name), queue, report)

            results = await asyncio.gather(
                *(turn(name, queue) for name, queue in sorted(by_tenant.items())),
                return_exceptions=True,
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _tenant_turn(
        self,
        session: aiohttp.ClientSession,
        secrets: _SecretCache,
        now: datetime,
        tenant: Tenant | None,
        queue: Sequence[OutboxRow],
        report: PassReport,
    ) -> None:
        """One tenant's due deliveries, in order, until the first failure."""
        notification = tenant.spec.notification if tenant is not None else None
        if notification is None:
            why = (
                "not sent: the Tenant no longer exists" if tenant is None
                else "not sent: the Tenant no longer names a webhook (spec.notification removed)"
            )  # fmt: skip
            for row in queue:
                if await asyncio.to_thread(self.ledger.dead_letter, row.id, now, why):
                    self._count(row.tenant, _Attempt("dead", why), report)
            return
        for row in queue:
            attempt = await self._attempt(session, secrets, now, notification, row)
            next_at = (
                None if attempt.outcome == "delivered"
                else self.policy.next_attempt(row.attempts + 1, now)
            )  # fmt: skip
            if attempt.outcome == "failed" and next_at is None:
                attempt = _Attempt("dead", attempt.error)
            changed = await asyncio.to_thread(
                self.ledger.record_attempt, row.id, now,
                delivered=attempt.outcome == "delivered", error=attempt.error,
                next_attempt_at=next_at, seen_attempts=row.attempts,
            )  # fmt: skip
            if changed:
                self._count(row.tenant, attempt, report)
            if attempt.outcome != "delivered":
                log.warning("webhook %s of tenant %s: %s (attempt %d of %d)", row.type,
                            row.tenant, attempt.error, row.attempts + 1,
                            self.policy.max_attempts)  # fmt: skip
                return  # the receiver is unwell: its other deliveries wait for the next pass

    def _count(self, tenant: str, attempt: _Attempt, report: PassReport) -> None:
        if attempt.outcome == "delivered":
            report.delivered += 1
        elif attempt.outcome == "failed":
            report.failed += 1
        else:
            report.dead += 1
        if self.metrics is not None:
            self.metrics.attempt(tenant, attempt.outcome)

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        secrets: _SecretCache,
        now: datetime,
        notification: Notification,
        row: OutboxRow,
    ) -> _Attempt:
        body = cloudevents.envelope_bytes(row)
        headers = {"Content-Type": cloudevents.CONTENT_TYPE}
        if notification.secret_ref is not None:
            key, problem = await secrets.key(
                notification.secret_ref.namespace,
                notification.secret_ref.name,
                notification.secret_ref.key,
            )
            if key is None:
                return _Attempt("failed", f"not sent: {problem}")
            headers[signing.HEADER] = signing.sign(body, key, now)
        return await self._post(session, notification.webhook_url, body, headers)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
    ) -> _Attempt:
        timeout_s = self.policy.timeout_s
        try:
            async with (
                asyncio.timeout(timeout_s),
                session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                status = resp.status
                if 200 <= status < 300:
                    return _Attempt("delivered")
                if 300 <= status < 400:
                    where = resp.headers.get("Location", "?")
                    return _Attempt(
                        "failed", _short(f"HTTP {status} to {where}: redirects are not followed")
                    )
                answer = (await resp.content.read(_ANSWER_BYTES)).decode("utf-8", "replace")
        except TimeoutError:
            return _Attempt("failed", f"no answer within {timeout_s:g}s")
        except aiohttp.ClientError as exc:
            return _Attempt("failed", _short(f"cannot reach the webhook: {exc!r}"))
        except ValueError as exc:  # a URL aiohttp cannot use
            return _Attempt("failed", _short(f"invalid webhook URL: {exc}"))
        return _Attempt("failed", _short(f"HTTP {status}: {answer}" if answer.strip()
                                         else f"HTTP {status}"))  # fmt: skip


class _SecretCache:
    """Signing keys for one pass: each Secret read at most once (concurrent asks share the
    read, and a slow read delays only the tenants that name that Secret), off the loop."""

    def __init__(self, read: SecretReader) -> None:
        self._read = read
        self._reads: dict[tuple[str, str], asyncio.Task[dict[str, str] | None]] = {}

    async def key(self, namespace: str, name: str, key: str) -> tuple[bytes | None, str]:
        where = (namespace, name)
        task = self._reads.get(where)
        if task is None:
            task = self._reads[where] = asyncio.ensure_future(
                asyncio.to_thread(self._read, namespace, name)
            )
        try:
            data = await asyncio.shield(task)
        except TransientError as exc:
            return None, _short(f"cannot read the signing secret: {exc}")
        if data is None:
            return None, f"signing secret {namespace}/{name} not found"
        value = secret_value(data, key)
        if value is None:
            return None, f"signing secret {namespace}/{name} has no usable (non-empty) key {key!r}"
        return value, ""


__all__ = ["EventPoster", "Notifier", "PassReport", "RetryPolicy"]
