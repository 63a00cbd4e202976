"""The webhook as the operator runs it: certificate, HTTPS server, caBundle and labels.

    webhook = AdmissionWebhook.for_cluster(api_client, settings, tenants=..., leading=...)
    await webhook.start()      # certificate ready, serving, caBundle patched (or retried)
    ...
    await webhook.stop()

`start` (every replica): ensure the certificate in its Secret (`certstore`), learn the
operator's username (unless given) so its own requests are exempt, serve `/validate` over
HTTPS, and try to set the caBundle once. Then two background tasks:
- every `refresh_s` (`retry_s` after a failure or while the configuration is missing): read
  the Secret again (renewing when due; another replica may have renewed it), reload the
  serving certificate when it changed, and set the caBundle where it differs;
- the leader's namespace labels (`labels.NamespaceLabeler`).

A failure to reach the API server at start is a TransientError (the operator's start is
retried); not learning the username is only logged (nothing is then exempt: the operator's
restores run while the Tenant is `Restoring`, which is never denied anyway).

Never stop serving because a refresh failed: the certificate being served stays valid for
at least 30 days after renewal became due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kubemeter_operator.admission.certstore import (
    SecretStore,
    WebhookConfigs,
    ensure_certificate,
    sync_ca_bundle,
)
from kubemeter_operator.admission.kube import (
    KubeNamespaces,
    KubeSecretStore,
    KubeWebhookConfigs,
    WorkloadReader,
    whoami,
)
from kubemeter_operator.admission.labels import NamespaceLabeler, NamespaceStore
from kubemeter_operator.admission.server import (
    Reviewer,
    WorkloadLookup,
    bound_port,
    create_app,
    serve,
)
from kubemeter_operator.admission.tls import ServingTls
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import KubemeterError, PermanentError
from kubemeter_operator.kube.gpu import GpuResources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionSettings:
    host: str
    port: int
    """0: a free port (tests); see `AdmissionWebhook.port`."""
    webhook_name: str
    """The ValidatingWebhookConfiguration whose caBundle is kept current."""
    cert_namespace: str
    cert_name: str
    hosts: tuple[str, ...]
    """DNS names and IP addresses of the serving certificate."""
    gpu: GpuResources
    exempt_username: str | None = None
    """The operator's own username; None: ask the API server (SelfSubjectReview)."""
    refresh_s: float = 300.0
    retry_s: float = 10.0
    label_interval_s: float = 15.0


@dataclass(frozen=True)
class AdmissionPorts:
    """The API calls the webhook makes (blocking; fakes in unit tests)."""

    secret: SecretStore
    configs: WebhookConfigs
    namespaces: NamespaceStore
    lookup: WorkloadLookup
    whoami: Callable[[], str]


class AdmissionWebhook:
    def __init__(
        self,
        settings: AdmissionSettings,
        ports: AdmissionPorts,
        *,
        tenants: Callable[[], Mapping[str, Tenant]],
        leading: Callable[[], bool],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.ports = ports
        self.tenants = tenants
        self.clock = clock
        self.labeler = NamespaceLabeler(
            ports.namespaces, tenants, leading, interval_s=settings.label_interval_s
        )
        self.tls: ServingTls | None = None
        self.exempt_users: frozenset[str] = frozenset()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._missing = False
        """The configuration was missing last time (logged once until it appears)."""

    @classmethod
    def for_cluster(
        cls,
        api_client: Any,
        settings: AdmissionSettings,
        *,
        tenants: Callable[[], Mapping[str, Tenant]],
        leading: Callable[[], bool],
    ) -> AdmissionWebhook:
        workloads = WorkloadReader(api_client)

        async def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
            return await asyncio.to_thread(workloads.get, kind, namespace, name)

        ports = AdmissionPorts(
            secret=KubeSecretStore(api_client, settings.cert_namespace, settings.cert_name),
            configs=KubeWebhookConfigs(api_client),
            namespaces=KubeNamespaces(api_client),
            lookup=lookup,
            whoami=lambda: whoami(api_client),
        )
        return cls(settings, ports, tenants=tenants, leading=leading)

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the admission webhook is not serving")
        return bound_port(self._runner)

    async def start(self) -> None:
        s = self.settings
        bundle = await asyncio.to_thread(
            ensure_certificate, self.ports.secret, s.hosts, self.clock()
        )
        self.tls = ServingTls(bundle)
        self.exempt_users = frozenset({await self._username()} - {""})
        reviewer = Reviewer(
            self.tenants, s.gpu, lookup=self.ports.lookup, exempt_users=self.exempt_users
        )
        self._runner = await serve(
            create_app(reviewer), host=s.host, port=s.port, ssl_context=self.tls.context
        )
        synced = await self._sync_ca_bundle()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(synced), name="admission-certificate"),
            asyncio.create_task(self.labeler.run(), name="admission-namespace-labels"),
        ]
        log.info(
            "admission webhook serving on %s:%d (configuration %s, exempt %s)",
            s.host, self.port, s.webhook_name, ", ".join(sorted(self.exempt_users)) or "nobody",
        )  # fmt: skip

    async def _username(self) -> str:
        if self.settings.exempt_username is not None:
            return self.settings.exempt_username
        try:
            return await asyncio.to_thread(self.ports.whoami)
        except PermanentError as exc:
            log.error("the operator's own username is unknown, none is exempt: %s", exc)
            return ""

    async def _sync_ca_bundle(self) -> bool:
        """True when the configuration's caBundle is current."""
        assert self.tls is not None
        try:
            result = await asyncio.to_thread(
                sync_ca_bundle, self.ports.configs, self.settings.webhook_name,
                self.tls.bundle.ca_pem,
            )  # fmt: skip
        except KubemeterError as exc:
            log.warning("caBundle of %s not set (retrying): %s", self.settings.webhook_name, exc)
            return False
        if result is None and not self._missing:
            log.warning(
                "validatingwebhookconfiguration %s not found: its caBundle is set once it "
                "exists (retrying every %.0fs)", self.settings.webhook_name, self.settings.retry_s,
            )  # fmt: skip
        self._missing = result is None
        return result is not None

    async def refresh(self) -> bool:
        """Renew or reload the certificate and set the caBundle now; True when all is
        current."""
        assert self.tls is not None
        try:
            bundle = await asyncio.to_thread(
                ensure_certificate, self.ports.secret, self.settings.hosts, self.clock()
            )
        except KubemeterError as exc:
            log.warning("admission certificate not refreshed (retrying): %s", exc)
            return False
        if bundle != self.tls.bundle:
            try:
                self.tls.load(bundle)
            except ssl.SSLError as exc:
                log.error("renewed admission certificate not loaded (retrying): %s", exc)
                return False
            log.info("admission webhook serves the renewed certificate")
        return await self._sync_ca_bundle()

    async def _refresh_loop(self, current: bool) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s if current else self.settings.retry_s)
            current = await self.refresh()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
