"""Operator configuration: flags and environment, validated before anything starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kubemeter_operator.api.errors import format_validation_error
from kubemeter_operator.errors import InputError
from kubemeter_operator.kube.gpu import GpuResources

ENV_PREFIX = "KUBEMETER_"


class OperatorConfig(BaseModel):
    """Everything the operator process needs. Each field can come from a flag or from
    `KUBEMETER_<FIELD>` in the environment (e.g. `KUBEMETER_PROMETHEUS_URL`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prometheus_url: str = Field(pattern=r"^https?://[^\s]+$")
    """Prometheus that scrapes the exporter (and the inference servers)."""
    db: str = "sqlite:///kubemeter-ledger.db"
    """The ledger: a SQLite file URL/path or a postgresql+psycopg:// URL."""
    interval_s: float = Field(default=15.0, gt=0, le=3600)
    """Metering interval (seconds)."""
    lag_s: float = Field(default=30.0, ge=0, le=3600)
    """How far window ends trail now (>= scrape interval + scrape timeout)."""
    events_listen: str = "0.0.0.0:8080"
    """host:port of the events API; empty disables it."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Port of the operator's own /metrics (0 disables it)."""
    period_grace_s: float = Field(default=3600.0, ge=0, le=7 * 86400)
    """A period is finalised once metering has covered its end plus this grace (seconds),
    so events that arrive a little late still land on its invoice."""
    backdate_days: int = Field(default=35, ge=1, le=366)
    """The events API refuses usage timestamped more than this many days ago."""
    # -- the events API's limits ---------------------------------------------------------
    events_max_inflight: int = Field(default=256, ge=1, le=100_000)
    """Requests handled at once; beyond it the API answers 503 with Retry-After."""
    events_header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """A client must send its request line and headers within this time."""
    events_body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """A client must send its whole body within this time."""
    events_auth_failures_per_minute: int = Field(default=20, ge=1, le=100_000)
    """Failed authentications a client (IP) may make per minute before it gets 429."""
    events_tls_secret: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
    )
    """`namespace/name` of a kubernetes.io/tls Secret: serve the events API over TLS."""
    # -- which counters are trusted -------------------------------------------------------
    exporter_job: str = Field(default="kubemeter-exporter", min_length=1, max_length=200)
    """The Prometheus scrape job of the exporter: GPU series from any other job are ignored."""
    exporter_namespace: str | None = Field(default=None, max_length=63)
    """Namespace of the exporter pods (default: the operator's own, $POD_NAMESPACE)."""
    exporter_selector: str = Field(
        default="app.kubernetes.io/component=exporter", min_length=1, max_length=500
    )
    """Label selector of the exporter pods (their node checks each series' `node`)."""
    gpu_tolerance_s: float = Field(default=5.0, ge=0, le=3600)
    """GPU milliseconds of one series may exceed the wall time of a delta by this much."""
    max_token_rate: float = Field(default=1_000_000.0, gt=0)
    """Tokens per second one counter series may grow by; more is quarantined."""
    tombstone_days: float = Field(default=15.0, ge=1, le=3650)
    """How long a vanished series is remembered (>= Prometheus' retention)."""
    simulation_speed: int = Field(default=1, ge=1, le=3600)
    """Simulated exporters only (the demo): their counters run this many times faster than
    wall time, and the GPU and token bounds scale with it. Never set it for real GPUs."""
    # -- one active operator ----------------------------------------------------------------
    lease_name: str = Field(default="kubemeter-operator", min_length=1, max_length=253)
    """The coordination.k8s.io Lease that elects the one replica that meters and bills."""
    lease_namespace: str | None = Field(default=None, max_length=63)
    """Namespace of the Lease (default: the operator's own, $POD_NAMESPACE)."""
    lease_duration_s: float = Field(default=12.0, ge=2, le=600)
    """A leader that has not renewed for this long has lost the lease."""
    lease_renew_s: float = Field(default=3.0, gt=0, le=300)
    """How often the leader renews (and a standby retries)."""
    identity: str | None = Field(default=None, max_length=253)
    """This replica's name in the Lease (default: $POD_NAME, else host and pid)."""
    # -- budget enforcement ------------------------------------------------------------------
    gpu_resources: str = Field(
        default="nvidia.com/gpu,nvidia.com/mig-*", min_length=1, max_length=1000
    )
    """Comma-separated resource names that count as a GPU (a trailing * matches any suffix):
    workloads requesting one are what enforcement stops and admission denies."""
    keda: Literal["auto", "on", "off"] = "auto"
    """Pause KEDA ScaledObjects of suspended workloads: when the KEDA CRDs exist (auto),
    always (on), never (off; the chart then grants no access to scaledobjects)."""
    # -- admission webhook -------------------------------------------------------------------
    admission_listen: str = ""
    """host:port of the validating admission webhook (HTTPS); empty disables it."""
    admission_webhook_name: str = Field(default="kubemeter-admission", min_length=1, max_length=253)
    """The ValidatingWebhookConfiguration whose caBundle the operator keeps current."""
    admission_cert_secret: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
    )
    """`namespace/name` of the Secret holding the webhook's self-managed CA and certificate
    (shared by every replica); default `$POD_NAMESPACE/kubemeter-admission-cert`."""
    admission_hosts: str = Field(default="", max_length=2000)
    """Comma-separated DNS names and IP addresses the webhook's certificate is valid for
    (default: the chart's Service, `<webhook service>.<namespace>.svc`)."""
    # -- webhooks (spec.notification) --------------------------------------------------------
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """A webhook receiver must answer within this time, or the attempt failed."""
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    """Attempts per notification before it is dead-lettered."""
    webhook_backoff_s: float = Field(default=5.0, gt=0, le=3600)
    """Wait before the second attempt; it doubles after each failure..."""
    webhook_backoff_max_s: float = Field(default=600.0, gt=0, le=86400)
    """...up to this."""
    kubeconfig: str | None = None
    """Kubeconfig path; in-cluster config when unset."""
    standalone: bool = False
    """A single replica: no Lease, this process is always the leader."""

    @field_validator("events_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value == "":
            return value
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("admission_listen")
    @classmethod
    def _admission_listen(cls, value: str) -> str:
        return cls._listen(value)

    @field_validator("gpu_resources")
    @classmethod
    def _gpu_resources(cls, value: str) -> str:
        GpuResources.parse(value)  # raises ValueError naming the bad entry
        return value

    @property
    def gpu(self) -> GpuResources:
        return GpuResources.parse(self.gpu_resources)

    @property
    def admission_host_port(self) -> tuple[str, int] | None:
        if not self.admission_listen:
            return None
        host, _, port = self.admission_listen.rpartition(":")
        return host or "0.0.0.0", int(port)

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorConfig:
        if self.lease_renew_s * 2 > self.lease_duration_s:
            raise ValueError(
                "lease_renew_s: must be at most half of lease_duration_s (a leader renews "
                "several times per lease, and stops acting before a standby may take over)"
            )
        return self

    @property
    def events_host_port(self) -> tuple[str, int] | None:
        if not self.events_listen:
            return None
        host, _, port = self.events_listen.rpartition(":")
        return host or "0.0.0.0", int(port)

    @classmethod
    def load(cls, flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Flags win over `KUBEMETER_*` environment variables; errors name the field."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            flag = flags.get(name)
            if flag is not None:
                values[name] = flag
            elif f"{ENV_PREFIX}{name.upper()}" in env:
                values[name] = env[f"{ENV_PREFIX}{name.upper()}"]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise InputError("config", format_validation_error(exc)) from exc
