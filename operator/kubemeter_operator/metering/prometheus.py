"""A thin Prometheus client for metering: instant queries at a given time, errors wrapped.

Only raw counter values are read (``last_over_time(<counter>[span])`` at the window end);
``rate()``/``increase()`` extrapolation is never used for money.

Errors: connection failures, timeouts, HTTP 429 and 5xx raise :class:`PrometheusUnavailableError`
(a :class:`TransientError`)
(retry later; the checkpoint does not move); HTTP 400 (a malformed query) raises
:class:`InputError`; any other failure raises :class:`PermanentError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from kubemeter_operator.errors import InputError, PermanentError, PrometheusUnavailableError

_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")
_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels (without ``__name__``) and value."""

    labels: Mapping[str, str]
    value: float


def selector(metric: str, labels: Mapping[str, str] | None = None) -> str:
    """``metric{a="x",b="y"}`` with label values escaped; names are validated."""
    if not _METRIC_RE.match(metric):
        raise InputError("metric", f"{metric!r} is not a valid Prometheus metric name")
    if not labels:
        return metric
    parts = []
    for name, value in sorted(labels.items()):
        if not _LABEL_RE.match(name):
            raise InputError("labels", f"{name!r} is not a valid Prometheus label name")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{name}="{escaped}"')
    return f"{metric}{{{','.join(parts)}}}"


def last_value_query(metric: str, span_ms: int, labels: Mapping[str, str] | None = None) -> str:
    """The last raw sample of every series of ``metric`` within ``span_ms`` before the
    evaluation time (series that stopped inside the span still yield their final value)."""
    if span_ms <= 0:
        raise InputError("span", "must be positive")
    return f"last_over_time({selector(metric, labels)}[{span_ms}ms])"


class PrometheusClient:
    """Instant queries against one Prometheus (``url`` like ``http://prometheus:9090``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        headers: dict[str, str] | None = None,
        disable_ssl: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        try:
            self._conn = PrometheusConnect(
                url=self.url,
                headers=headers,
                disable_ssl=disable_ssl,
                retry=Retry(total=0, raise_on_status=False),
                timeout=timeout_s,
            )
        except (TypeError, ValueError) as exc:
            raise InputError("prometheus.url", str(exc)) from exc

    def query(self, promql: str, at: datetime) -> list[Sample]:
        """Evaluate ``promql`` at ``at`` (an aware datetime); an instant vector is expected."""
        if at.tzinfo is None:
            raise InputError("at", "must carry a time zone")
        params = {"time": f"{at.timestamp():.3f}"}
        try:
            raw: Any = self._conn.custom_query(promql, params=params)
        except requests.exceptions.RequestException as exc:
            raise PrometheusUnavailableError(f"prometheus {self.url} unreachable: {exc}") from exc
        except PrometheusApiClientException as exc:
            raise _classify(self.url, promql, exc) from exc
        except ValueError as exc:  # a body that is not JSON (a proxy's error page)
            raise PrometheusUnavailableError(f"prometheus {self.url}: bad response: {exc}") from exc
        return _parse_vector(promql, raw)


def _classify(url: str, promql: str, exc: PrometheusApiClientException) -> Exception:
    match = _STATUS_RE.search(str(exc))
    status = int(match.group(1)) if match else 0
    detail = str(exc)[:500]
    if status == 429 or status >= 500:
        return PrometheusUnavailableError(f"prometheus {url}: HTTP {status}: {detail}")
    if status == 400:
        return InputError("query", f"prometheus rejected {promql!r}: {detail}")
    return PermanentError(f"prometheus {url}: query {promql!r} failed: {detail}")


def _parse_vector(promql: str, raw: Any) -> list[Sample]:
    if not isinstance(raw, list):
        raise PermanentError(f"prometheus: {promql!r} did not return an instant vector")
    samples: list[Sample] = []
    for item in raw:
        try:
            labels = dict(item["metric"])
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PermanentError(f"prometheus: unexpected result for {promql!r}: {exc}") from exc
        labels.pop("__name__", None)
        if math.isnan(value) or math.isinf(value):
            continue
        samples.append(Sample(labels, value))
    return samples
