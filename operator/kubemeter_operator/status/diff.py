"""Write a Tenant's status only when something changed. Pure.

`status_patch(previous, new)` returns a JSON merge patch (RFC 7386) for the Tenant's
`/status` subresource, `{"status": {...}}`, holding only what changed (removed fields as
null, lists replaced whole), or None when nothing did. Conditions' `lastTransitionTime`
alone never makes a patch (it is not a change of state).
"""

from __future__ import annotations

from typing import Any

from kubemeter_operator.api.tenant import TenantStatus


def without_transition_times(status: dict[str, Any]) -> dict[str, Any]:
    """A status (wire form) with its conditions' lastTransitionTime left out: what two
    statuses are compared by (a transition time alone is not a change of state)."""
    out = dict(status)
    if "conditions" in out:
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in out["conditions"]
        ]
    return out


def merge_patch(before: Any, after: Any) -> Any:
    """The RFC 7386 merge patch turning `before` into `after` (dicts recursively)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return after
    patch: dict[str, Any] = {}
    for key in before.keys() - after.keys():
        patch[key] = None
    for key, value in after.items():
        if key not in before:
            patch[key] = value
        elif before[key] != value:
            patch[key] = merge_patch(before[key], value)
    return patch


def status_patch(previous: TenantStatus | None, new: TenantStatus) -> dict[str, Any] | None:
    """`{"status": <merge patch>}` when `new` differs from `previous`, else None."""
    before = previous.to_api() if previous is not None else {}
    after = new.to_api()
    if without_transition_times(before) == without_transition_times(after):
        return None
    return {"status": merge_patch(before, after)}
