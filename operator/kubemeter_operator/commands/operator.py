"""`kubemeter operator`: run the operator (kopf) with the metering loop and events API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from kubemeter_operator.config import OperatorConfig


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "operator",
        help="run the operator: meter tenants, write status, serve the events API",
        description="Flags may also be given as KUBEMETER_<FLAG> environment variables "
        "(e.g. KUBEMETER_PROMETHEUS_URL).",
    )
    parser.add_argument("--prometheus-url", dest="prometheus_url")
    parser.add_argument("--db", help="ledger URL (default sqlite:///kubemeter-ledger.db)")
    parser.add_argument("--interval", dest="interval_s", type=float, help="seconds (15)")
    parser.add_argument("--lag", dest="lag_s", type=float, help="seconds window ends trail now")
    parser.add_argument("--events-listen", dest="events_listen", help="host:port ('' = off)")
    parser.add_argument("--metrics-port", dest="metrics_port", type=int)
    parser.add_argument(
        "--period-grace", dest="period_grace_s", type=float,
        help="seconds after a period's end (once metered) before it is finalised (3600)",
    )  # fmt: skip
    parser.add_argument(
        "--backdate-days", dest="backdate_days", type=int,
        help="oldest usage timestamp the events API accepts, in days (35)",
    )  # fmt: skip
    for flag, dest, kind, help_ in (
        ("--events-max-inflight", "events_max_inflight", int, "requests at once (256)"),
        ("--events-header-timeout", "events_header_timeout_s", float, "seconds (10)"),
        ("--events-body-timeout", "events_body_timeout_s", float, "seconds (30)"),
        ("--events-auth-failures", "events_auth_failures_per_minute", int, "per IP/min (20)"),
        ("--events-tls-secret", "events_tls_secret", str, "namespace/name of a TLS Secret"),
        ("--exporter-job", "exporter_job", str, "scrape job of the exporter"),
        ("--exporter-namespace", "exporter_namespace", str, "namespace of exporter pods"),
        ("--exporter-selector", "exporter_selector", str, "label selector of exporter pods"),
        ("--gpu-tolerance", "gpu_tolerance_s", float, "seconds of slack per GPU delta (5)"),
        ("--max-token-rate", "max_token_rate", float, "tokens/s per series (1e6)"),
        ("--tombstone-days", "tombstone_days", float, "days a vanished series is kept (15)"),
        ("--simulation-speed", "simulation_speed", int, "simulated exporters only: speed (1)"),
        ("--lease-name", "lease_name", str, "the leader-election Lease"),
        ("--lease-namespace", "lease_namespace", str, "its namespace"),
        ("--lease-duration", "lease_duration_s", float, "seconds (12)"),
        ("--lease-renew", "lease_renew_s", float, "seconds (3)"),
        ("--identity", "identity", str, "this replica's holder identity"),
        ("--gpu-resources", "gpu_resources", str, "resource names that are GPUs"),
        ("--keda", "keda", str, "pause KEDA ScaledObjects: auto, on or off"),
        ("--admission-listen", "admission_listen", str, "host:port of the webhook"),
        ("--admission-webhook-name", "admission_webhook_name", str, "its configuration"),
        ("--admission-cert-secret", "admission_cert_secret", str, "namespace/name"),
        ("--admission-hosts", "admission_hosts", str, "DNS names/IPs of its certificate"),
        ("--webhook-timeout", "webhook_timeout_s", float, "seconds per delivery (10)"),
        ("--webhook-max-attempts", "webhook_max_attempts", int, "before dead letter (8)"),
        ("--webhook-backoff", "webhook_backoff_s", float, "first retry wait, seconds (5)"),
        ("--webhook-backoff-max", "webhook_backoff_max_s", float, "seconds (600)"),
    ):
        parser.add_argument(flag, dest=dest, type=kind, help=help_)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--standalone", action="store_true", default=None)
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = OperatorConfig.load(vars(args))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kopf logs every handled watch event at INFO; keep its per-object chatter to warnings
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if config.kubeconfig:  # kopf's own login reads it from the environment
        os.environ["KUBECONFIG"] = config.kubeconfig

    from kubemeter_operator.controller.handlers import run_operator

    asyncio.run(run_operator(config))
    return 0
