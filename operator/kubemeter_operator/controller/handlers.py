"""The kopf handlers: the only module that registers with kopf. Thin by design: each
handler hands the watched object to `OperatorService`, which parses it into the API models
and does the work. Our errors become kopf's at this edge. (Pods are not watched through kopf:
the service follows their metadata only, see `metering.podwatch`.)"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubemeter_operator.api.priceplan import GROUP, VERSION
from kubemeter_operator.config import OperatorConfig
from kubemeter_operator.controller.service import OperatorService
from kubemeter_operator.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


def _service(memo: kopf.Memo) -> OperatorService:
    service: OperatorService = memo["service"]
    return service


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING
    service = OperatorService(memo["config"])
    memo["service"] = service  # watch events feed it even before it has started
    try:
        await service.start()
    except TransientError as exc:  # the API server or the database is briefly away
        log.warning("operator start failed, retrying in the background: %s", exc)
        service.retry_start_in_background()
    except PermanentError as exc:  # bad configuration or credentials: do not run
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "service" in memo:
        await _service(memo).stop()


@kopf.on.event(GROUP, VERSION, "tenants")
def tenant_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _service(memo).tenant_event(type, body)


@kopf.on.event(GROUP, VERSION, "priceplans")
async def priceplan_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await _service(memo).priceplan_event(type, body)
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    except PermanentError as exc:
        raise kopf.PermanentError(str(exc)) from exc


async def run_operator(config: OperatorConfig) -> None:
    """Run kopf with these handlers until it stops (the `kubemeter operator` command).

    kopf runs standalone in every replica (all of them watch Tenants and PricePlans to
    keep their caches warm and serve the events API); which replica acts is decided by our
    own Lease (`controller.leader`), not by kopf peering."""
    await kopf.operator(clusterwide=True, standalone=True, memo=kopf.Memo(config=config))
