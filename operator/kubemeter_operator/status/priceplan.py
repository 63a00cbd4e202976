"""A PricePlan's status: `Valid` with the reason it was accepted or refused. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubemeter_operator.api.conditions import Condition
from kubemeter_operator.api.errors import format_validation_error
from kubemeter_operator.api.priceplan import PricePlan, PricePlanStatus
from kubemeter_operator.status.diff import without_transition_times


def priceplan_status(
    body: Mapping[str, Any], now: datetime | None = None
) -> tuple[PricePlan | None, dict[str, Any]]:
    """Parse a PricePlan body; return it (None if invalid) and the status it should show."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    try:
        plan = PricePlan.model_validate(dict(body))
    except ValidationError as exc:
        message = format_validation_error(exc, data=dict(body))
        condition = Condition(
            type="Valid", status="False", reason="InvalidSpec", message=message[:2000],
            last_transition_time=now, observed_generation=generation,
        )  # fmt: skip
        status = PricePlanStatus(observed_generation=generation, conditions=[condition])
        return None, status.to_api()
    condition = Condition(
        type="Valid", status="True", reason="Accepted",
        message=f"{len(plan.spec.meters)} meters in {plan.spec.currency}",
        last_transition_time=now, observed_generation=generation,
    )  # fmt: skip
    status = PricePlanStatus(
        meter_count=len(plan.spec.meters), observed_generation=generation, conditions=[condition]
    )
    return plan, status.to_api()


def same_status(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Equal ignoring condition transition times."""
    return without_transition_times(dict(current or {})) == without_transition_times(dict(wanted))
