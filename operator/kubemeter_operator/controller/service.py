"""The operator process: what the kopf handlers feed and what runs beside them.

`OperatorService` keeps the current Tenants, PricePlans and pods (fed by watch events from
`handlers`), and runs the operator cycle (`controller.cycle`: meter -> bill -> status) and
the events API on kopf's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import kubernetes
import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from kubemeter_operator.admission.webhook import AdmissionSettings, AdmissionWebhook
from kubemeter_operator.api.errors import format_validation_error
from kubemeter_operator.api.priceplan import PricePlan, PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.billing.biller import Biller
from kubemeter_operator.config import OperatorConfig
from kubemeter_operator.controller.budgets import BudgetStep
from kubemeter_operator.controller.cycle import OperatorCycle
from kubemeter_operator.controller.leader import LeaderElector
from kubemeter_operator.controller.reconcile import TenantReconciler
from kubemeter_operator.enforcement.enforcer import Enforcer
from kubemeter_operator.errors import KubemeterError, TransientError
from kubemeter_operator.events_api.app import EventsApiConfig, create_app
from kubemeter_operator.events_api.k8s_tokens import (
    KubernetesTokenStore,
    kubernetes_secret_reader,
)
from kubemeter_operator.events_api.server import serve
from kubemeter_operator.events_api.tls import server_ssl_context
from kubemeter_operator.kube.client import KubeWriter, list_world, load_api_client
from kubemeter_operator.kube.lease import KubeLeaseStore
from kubemeter_operator.kube.secrets import kubernetes_secret_reader as secret_reader
from kubemeter_operator.kube.workloads import KubeWorkloads
from kubemeter_operator.ledger import Ledger
from kubemeter_operator.metering.cycle import CycleResult, MeteringConfig, MeteringCycle
from kubemeter_operator.metering.exporters import ExporterWatch, start_exporter_watch
from kubemeter_operator.metering.loop import MeteringLoop
from kubemeter_operator.metering.metrics import MeteringMetrics
from kubemeter_operator.metering.pods import PodRegistry
from kubemeter_operator.metering.podwatch import PodMetadataWatch, start_pod_watch
from kubemeter_operator.metering.prometheus import PrometheusClient
from kubemeter_operator.notifications.delivery import Notifier, RetryPolicy
from kubemeter_operator.notifications.metrics import NotificationMetrics
from kubemeter_operator.status.priceplan import priceplan_status, same_status
from kubemeter_operator.telemetry.metrics import TenantMetrics

log = logging.getLogger(__name__)


class OperatorService:
    """State and background work of one operator process."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.tenants: dict[str, Tenant] = {}
        self.plans: dict[str, PricePlan] = {}
        self.pods = PodRegistry()
        self.ledger: Ledger | None = None
        self.loop: MeteringLoop | None = None
        self.cycle: OperatorCycle | None = None
        self.writer: KubeWriter | None = None
        self.reconciler: TenantReconciler | None = None
        self.biller: Biller | None = None
        self.token_store: KubernetesTokenStore | None = None
        self.elector: LeaderElector | None = None
        self.admission: AdmissionWebhook | None = None
        self.registry = CollectorRegistry()
        """The operator's own metrics (registered once per process, whatever start() does)."""
        self.metering_metrics = MeteringMetrics(self.registry)
        self.notification_metrics = NotificationMetrics(self.registry)
        self.tenant_metrics = TenantMetrics(lambda: dict(self.tenants), self.registry)
        """Per-tenant metrics: gauges from the watched Tenant status (the same on every
        replica), counters of what this replica metered and enforced (`telemetry`)."""
        self.started = False
        self._metrics_served = False
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._pod_watch: PodMetadataWatch | None = None
        self._exporter_watch: ExporterWatch | None = None
        self._retry: asyncio.Task[None] | None = None

    # -- watch events (from handlers) ---------------------------------------------------

    def tenant_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name", ""))
        before = self._token_refs()
        if kind == "DELETED":
            self.tenants.pop(name, None)
            self.tenant_metrics.forget(name)
            if self.reconciler is not None:
                self.reconciler.forget(name)
            if self.biller is not None:
                self.biller.forget(name)
        else:
            try:
                self.tenants[name] = Tenant.model_validate(dict(body))
                self.tenant_metrics.known(name)
            except ValidationError as exc:  # the CRD schema should have refused it
                log.error("tenant %s ignored: %s", name, format_validation_error(exc))
                self.tenants.pop(name, None)
                self.tenant_metrics.forget(name)
        # Status patches (every cycle) come back as Tenant events too: re-read the token
        # Secrets only when which tenants exist or which Secret they name has changed.
        if self.token_store is not None and self._token_refs() != before:
            self.token_store.tenants_changed()

    def _token_refs(self) -> dict[str, object]:
        return {name: t.spec.api_token_secret_ref for name, t in self.tenants.items()}

    async def priceplan_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            self.plans.pop(name, None)
            return
        plan, wanted = priceplan_status(body)
        if plan is None:
            self.plans.pop(name, None)
        else:
            self.plans[name] = plan
        if self.writer is not None and not same_status(body.get("status"), wanted):
            await self.writer.patch_status("priceplans", name, {"status": wanted})

    # -- lifecycle -------------------------------------------------------------------------

    def _inputs(self) -> tuple[list[Tenant], dict[str, PricePlanSpec]]:
        return list(self.tenants.values()), {n: p.spec for n, p in self.plans.items()}

    async def start(self) -> None:
        """Start everything, or nothing: a failure part-way stops what was started, so a
        retry (`start_with_retries`) begins from a clean slate."""
        self._stopping = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.started = True

    async def start_with_retries(
        self, *, first_delay_s: float = 1.0, max_delay_s: float = 30.0
    ) -> None:
        """`start`, retried with exponential backoff while it fails transiently (the API
        server or the database briefly away at start-up): no pod restart needed."""
        delay = first_delay_s
        while True:
            try:
                await self.start()
                return
            except TransientError as exc:
                log.warning("operator start failed (retry in %.0fs): %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)

    def retry_start_in_background(self) -> None:
        """Keep trying to start without blocking the caller (kopf keeps watching meanwhile)."""
        self._retry = asyncio.create_task(self.start_with_retries(), name="operator-start")

    async def _start(self) -> None:
        cfg = self.config
        api_client = load_api_client(cfg.kubeconfig)
        self.writer = KubeWriter(api_client)
        self.ledger = await asyncio.to_thread(Ledger.open, cfg.db)
        self.reconciler = TenantReconciler(self.ledger, self.writer)
        # the exporter pods (the node check of GPU series): their namespace, else ours
        exporter_ns = cfg.exporter_namespace or os.environ.get("POD_NAMESPACE")
        if exporter_ns:
            self._exporter_watch = await asyncio.to_thread(
                start_exporter_watch, api_client, namespace=exporter_ns,
                selector=cfg.exporter_selector, retention_s=cfg.tombstone_days * 86400,
            )  # fmt: skip
        else:
            log.warning(
                "no --exporter-namespace and no $POD_NAMESPACE: GPU series are checked by "
                "scrape job only, not against the node of the exporter pod"
            )
        cycle = MeteringCycle(
            self.ledger,
            PrometheusClient(cfg.prometheus_url),
            self.pods,
            MeteringConfig(
                step=timedelta(seconds=cfg.interval_s),
                lag=timedelta(seconds=cfg.lag_s),
                exporter_job=cfg.exporter_job,
                gpu_tolerance=timedelta(seconds=cfg.gpu_tolerance_s),
                max_token_rate=cfg.max_token_rate,
                tombstone_retention=timedelta(days=cfg.tombstone_days),
                time_scale=cfg.simulation_speed,
            ),
            metrics=self.metering_metrics,
            exporters=self._exporter_watch.directory if self._exporter_watch else None,
        )
        await self._seed(api_client)
        metrics = self.tenant_metrics

        def metered(result: CycleResult) -> None:  # a window the ledger held already: not again
            if result.accepted or not result.duplicates:
                metrics.metered(result.tenants)

        self.loop = MeteringLoop(cycle, self._inputs, on_cycle=metered)
        self.biller = Biller(self.ledger, grace=timedelta(seconds=cfg.period_grace_s))
        self.elector = None if cfg.standalone else self._elector(api_client)
        elector = self.elector
        reconciler = self.reconciler
        budgets = BudgetStep(
            self.ledger,
            Enforcer(self.ledger, KubeWorkloads(api_client), cfg.gpu, keda=cfg.keda),
            self.writer,
            reconciler.recent,
            telemetry=metrics,
        )
        notifier = Notifier(
            self.ledger,
            self.writer,
            secret_reader(kubernetes.client.CoreV1Api(api_client)),
            policy=RetryPolicy(
                timeout_s=cfg.webhook_timeout_s,
                max_attempts=cfg.webhook_max_attempts,
                backoff_s=cfg.webhook_backoff_s,
                backoff_max_s=cfg.webhook_backoff_max_s,
            ),
            metrics=self.notification_metrics,
        )
        self.cycle = OperatorCycle(
            self.loop,
            self.biller,
            self.reconciler,
            lambda: (dict(self.tenants), dict(self.plans)),
            leading=(lambda: elector.leading) if elector is not None else (lambda: True),
            token_problems=lambda: self.token_store.problems if self.token_store else {},
            budgets=budgets,
            notifier=notifier,
        )
        metrics.set_leading((lambda: elector.leading) if elector is not None else (lambda: True))
        if elector is not None:
            self._tasks.append(asyncio.create_task(elector.run(self._stopping), name="lease"))
        self._tasks.append(asyncio.create_task(self.cycle.run(), name="operator-cycle"))
        if cfg.metrics_port and not self._metrics_served:
            prometheus_client.start_http_server(cfg.metrics_port, registry=self.registry)
            self._metrics_served = True
        listen = cfg.events_host_port
        if listen is not None:
            core = kubernetes.client.CoreV1Api(api_client)
            self.token_store = KubernetesTokenStore(
                lambda: dict(self.tenants), kubernetes_secret_reader(core)
            )
            self._tasks.append(asyncio.create_task(self.token_store.run(), name="token-store"))
            app = create_app(
                self.ledger,
                self.token_store,
                lambda: dict(self.tenants),
                config=EventsApiConfig(
                    max_backdate=timedelta(days=cfg.backdate_days),
                    max_inflight=cfg.events_max_inflight,
                    header_timeout_s=cfg.events_header_timeout_s,
                    body_timeout_s=cfg.events_body_timeout_s,
                    auth_failures_per_minute=cfg.events_auth_failures_per_minute,
                ),
            )
            self._runner = await serve(
                app,
                host=listen[0],
                port=listen[1],
                header_timeout_s=cfg.events_header_timeout_s,
                ssl_context=(
                    await asyncio.to_thread(
                        server_ssl_context,
                        kubernetes_secret_reader(core),
                        cfg.events_tls_secret,
                    )
                    if cfg.events_tls_secret
                    else None
                ),
            )
        # -- admission webhook (admission/): every replica serves it, the leader labels the
        # tenant namespaces; its certificate Secret is shared by all replicas.
        admission_listen = cfg.admission_host_port
        if admission_listen is not None:
            own_ns = os.environ.get("POD_NAMESPACE") or "default"
            cert_ns, _, cert_name = (
                cfg.admission_cert_secret or f"{own_ns}/kubemeter-admission-cert"
            ).partition("/")
            hosts = tuple(h.strip() for h in cfg.admission_hosts.split(",") if h.strip())
            self.admission = AdmissionWebhook.for_cluster(
                api_client,
                AdmissionSettings(
                    host=admission_listen[0],
                    port=admission_listen[1],
                    webhook_name=cfg.admission_webhook_name,
                    cert_namespace=cert_ns,
                    cert_name=cert_name,
                    hosts=hosts or (f"{cfg.admission_webhook_name}.{own_ns}.svc",),
                    gpu=cfg.gpu,
                ),
                tenants=lambda: self.tenants,
                leading=(lambda: elector.leading) if elector is not None else (lambda: True),
            )
            await self.admission.start()
        # -- end of the admission webhook
        log.info("kubemeter operator started (ledger %s)", self.ledger.dialect)

    def _elector(self, api_client: Any) -> LeaderElector:
        cfg = self.config
        namespace = cfg.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
        identity = (
            cfg.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        )
        loop = asyncio.get_running_loop()

        def changed(leading: bool) -> None:  # called from the elector's thread
            if leading and self.cycle is not None:
                loop.call_soon_threadsafe(self.cycle.reset)

        return LeaderElector(
            KubeLeaseStore(api_client, namespace, cfg.lease_name),
            identity,
            duration_s=cfg.lease_duration_s,
            renew_s=cfg.lease_renew_s,
            on_change=changed,
        )

    async def _seed(self, api_client: Any) -> None:
        """List Tenants, PricePlans and pods before the first metering cycle, so a
        (re)started operator never meters a window before it knows who owns what. kopf's
        watch events keep Tenants and PricePlans current afterwards; pods (thousands) are
        followed by a metadata-only watch of our own (`metering.podwatch`)."""
        tenants, plans = await asyncio.to_thread(list_world, api_client)
        self._pod_watch = await asyncio.to_thread(start_pod_watch, api_client, self.pods)
        for body in plans:
            plan, _ = priceplan_status(body)
            if plan is not None:
                self.plans.setdefault(plan.name, plan)
        for body in tenants:
            name = str(body.get("metadata", {}).get("name", ""))
            if name not in self.tenants:
                self.tenant_event(None, body)
        log.info(
            "seeded %d tenants, %d price plans, %d pods", len(tenants), len(plans), len(self.pods)
        )

    async def stop(self) -> None:
        """Stop whatever was started (idempotent; also after a failed start)."""
        self.started = False
        self.tenant_metrics.set_leading(lambda: False)
        if self._retry is not None and self._retry is not asyncio.current_task():
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._retry
            self._retry = None
        self._stopping.set()
        if self.cycle is not None:
            self.cycle.stop()
        if self._pod_watch is not None:
            await asyncio.to_thread(self._pod_watch.stop)
        if self._exporter_watch is not None:
            await asyncio.to_thread(self._exporter_watch.stop)
            self._exporter_watch = None
        if self._runner is not None:
            await self._runner.cleanup()
        if self.admission is not None:  # the admission webhook
            await self.admission.stop()
            self.admission = None
        if self.elector is not None:  # give the Lease up so a standby takes over at once
            with contextlib.suppress(KubemeterError):
                await asyncio.to_thread(self.elector.release)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._runner = None
        self._pod_watch = None
        self.cycle = None
        self.elector = None
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)
            self.ledger = None
