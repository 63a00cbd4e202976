"""The admission decision: an AdmissionReview v1 request in, allowed or denied out. Pure.

    request = parse_review(body)                       # InputError when malformed
    outcome = review(request, context)                 # Verdict | WorkloadNeeded
    if isinstance(outcome, WorkloadNeeded):            # a /scale request: the caller reads
        outcome = review(request, context, workload=Workload(obj))  # the workload, asks again
    body = review_response(request.uid, outcome)

What is denied, only in a namespace of a suspended Tenant (`ownership`: the one Tenant that
lists it, state Suspending or Suspended) and only for pods its pod selector takes (a
workload by its pod template's labels); a "GPU workload" is one whose pod template requests
a GPU resource (`kube.gpu.GpuResources`, the same test enforcement stops workloads by):

- CREATE of a Pod requesting a GPU;
- CREATE of a GPU Deployment or StatefulSet with replicas > 0, and UPDATE that raises its
  GPU replicas (more than the old object ran, counting an old object without a GPU as 0);
- UPDATE of the `scale` subresource of a Deployment or StatefulSet (autoscaling/v1 Scale:
  `kubectl scale`, HPA, KEDA) above both 0 and the old replicas, when the workload is listed
  in the Tenant's `status.suspendedWorkloads`, or else when its pod template requests a GPU.
  A Scale carries no template: `review` then answers `WorkloadNeeded`, the caller reads the
  workload and asks again with it (this module never does I/O); a workload that is gone is
  allowed;
- CREATE of a GPU Job or CronJob that is not suspended, and UPDATE of one that would run
  GPU pods where the old object did not (suspend true -> false, or a template that starts
  requesting a GPU).

Everything else is allowed: other kinds and operations, non-GPU workloads, scale-downs, and
every request made by an exempt user (the operator itself, which restores workloads).

The denial message names the tenant, why it is suspended, the limit and the amount spent
(with the currency) and the three ways to lift it; it stays under `MAX_MESSAGE` characters.

This module must never do I/O, read the clock, or deny anything outside the rules above: a
request it cannot make sense of (an unknown kind, an odd field) is allowed, since
enforcement stops whatever slips through on its next cycle.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubemeter_operator.admission.ownership import is_suspended, namespace_owners, selects
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.types import format_decimal
from kubemeter_operator.errors import InputError
from kubemeter_operator.kube.gpu import GpuResources, pod_template_labels, pod_template_spec

REVIEW_API_VERSION = "admission.k8s.io/v1"
MAX_MESSAGE = 1000
"""Characters of a denial message (kubectl prints it whole; Events cap at 1024)."""
_MAX_NAME = 80
"""Object names are shortened to this in a message, so it stays under MAX_MESSAGE."""

SCALABLE = {("apps", "deployments"): "Deployment", ("apps", "statefulsets"): "StatefulSet"}
SUSPENDABLE = {("batch", "jobs"): "Job", ("batch", "cronjobs"): "CronJob"}

_TRIGGERS = {
    "budgetExceeded": "its budget is spent",
    "budgetForecast": "its budget runs out within budget.stopBefore at the current burn rate",
    "walletEmpty": "its prepaid wallet is empty",
}


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of an AdmissionReview v1 `request` the decision reads."""

    uid: str
    operation: str
    """CREATE, UPDATE, DELETE or CONNECT."""
    group: str
    resource: str
    """Plural resource name (`pods`, `deployments`), of `request.resource`."""
    sub_resource: str
    """`scale`, `status`, ...; empty for the object itself."""
    kind: str
    """Kind of `object` (`Pod`, `Deployment`, `Scale`)."""
    namespace: str
    name: str
    username: str
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    why: str
    """A short, stable reason for logs (`not-gpu`, `exempt-user`, `gpu-pod`, ...)."""
    message: str = ""
    """For a denial: what the user reads (kubectl prints it)."""
    tenant: str | None = None
    """The suspended Tenant a denial enforces."""


@dataclass(frozen=True, slots=True)
class WorkloadNeeded:
    """`review` needs the Deployment or StatefulSet behind a Scale request to decide."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Workload:
    """The answer to WorkloadNeeded: the workload object, None when it does not exist."""

    obj: Mapping[str, Any] | None


@dataclass(frozen=True)
class ReviewContext:
    tenants: Mapping[str, Tenant]
    gpu: GpuResources
    exempt_users: Collection[str] = ()
    """Usernames whose requests are always allowed (the operator's own)."""


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any, field: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(field, "must be an object or null")
    return value


def parse_review(body: Any) -> AdmissionRequest:
    """The `request` of an AdmissionReview v1 body; InputError naming the field otherwise."""
    if not isinstance(body, Mapping):
        raise InputError("", "the body must be a JSON object (an AdmissionReview)")
    if body.get("apiVersion") != REVIEW_API_VERSION or body.get("kind") != "AdmissionReview":
        raise InputError(
            "apiVersion/kind",
            f"must be {REVIEW_API_VERSION} AdmissionReview, not "
            f"{str(body.get('apiVersion'))[:60]} {str(body.get('kind'))[:60]}",
        )
    request = body.get("request")
    if not isinstance(request, Mapping):
        raise InputError("request", "missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 256:
        raise InputError("request.uid", "must be a non-empty string")
    operation = request.get("operation")
    if not isinstance(operation, str) or not operation:
        raise InputError("request.operation", "must be a non-empty string")
    resource = request.get("resource")
    if not isinstance(resource, Mapping) or not isinstance(resource.get("resource"), str):
        raise InputError("request.resource", "must be an object with a resource name")
    kind = request.get("kind")
    if not isinstance(kind, Mapping) or not isinstance(kind.get("kind"), str):
        raise InputError("request.kind", "must be an object with a kind")
    user = request.get("userInfo")
    if user is not None and not isinstance(user, Mapping):
        raise InputError("request.userInfo", "must be an object")
    return AdmissionRequest(
        uid=uid,
        operation=operation,
        group=_str(resource.get("group")),
        resource=str(resource["resource"]),
        sub_resource=_str(request.get("subResource")),
        kind=str(kind["kind"]),
        namespace=_str(request.get("namespace")),
        name=_str(request.get("name")),
        username=_str((user or {}).get("username")),
        object=_object(request.get("object"), "request.object"),
        old_object=_object(request.get("oldObject"), "request.oldObject"),
    )


def review(
    request: AdmissionRequest, context: ReviewContext, *, workload: Workload | None = None
) -> Verdict | WorkloadNeeded:
    """Allowed or denied (see the module docstring); WorkloadNeeded for a Scale request
    that needs its workload, unless `workload` answers it."""
    if request.username and request.username in context.exempt_users:
        return Verdict(True, "exempt-user")
    key = (request.group, request.resource)
    if request.sub_resource == "scale" and key in SCALABLE:
        return _scale(request, context, SCALABLE[key], workload)
    if request.sub_resource:
        return Verdict(True, "subresource")
    if key == ("", "pods"):
        return _pod(request, context)
    if key in SCALABLE:
        return _replicated(request, context, SCALABLE[key])
    if key in SUSPENDABLE:
        return _suspendable(request, context, SUSPENDABLE[key])
    return Verdict(True, "not-governed")


def _suspended_owner(
    context: ReviewContext, namespace: str, labels: Mapping[str, str] | None
) -> Tenant | None:
    """The suspended Tenant that owns these pods (labels None: do not check the selector)."""
    tenant = namespace_owners(context.tenants).get(namespace)
    if tenant is None or not is_suspended(tenant):
        return None
    if labels is not None and not selects(tenant, labels):
        return None
    return tenant


def _pod(request: AdmissionRequest, context: ReviewContext) -> Verdict:
    obj = request.object
    if request.operation != "CREATE" or obj is None:
        return Verdict(True, "not-create")
    gpus = context.gpu.requested(pod_template_spec("Pod", obj))
    if not gpus:
        return Verdict(True, "not-gpu")
    tenant = _suspended_owner(context, request.namespace, pod_template_labels("Pod", obj))
    if tenant is None:
        return Verdict(True, "not-suspended")
    what = f"creating pod {_name(request)!r} requesting {', '.join(gpus)}"
    return _deny(tenant, "gpu-pod", what, request.namespace)


def _replicas(obj: Mapping[str, Any] | None, default: int) -> int:
    spec = (obj or {}).get("spec")
    value = spec.get("replicas") if isinstance(spec, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default


def _replicated(request: AdmissionRequest, context: ReviewContext, kind: str) -> Verdict:
    obj = request.object
    if request.operation not in ("CREATE", "UPDATE") or obj is None:
        return Verdict(True, "not-create-or-update")
    if not context.gpu.requests_gpu(pod_template_spec(kind, obj)):
        return Verdict(True, "not-gpu")
    # An absent spec.replicas defaults to 1 (the API server defaults it before we see it).
    replicas = _replicas(obj, 1)
    old = request.old_object if request.operation == "UPDATE" else None
    old_gpu = old is not None and context.gpu.requests_gpu(pod_template_spec(kind, old))
    before = _replicas(old, 1) if old_gpu else 0
    if replicas <= 0 or replicas <= before:
        return Verdict(True, "not-raising")
    tenant = _suspended_owner(context, request.namespace, pod_template_labels(kind, obj))
    if tenant is None:
        return Verdict(True, "not-suspended")
    verb = "creating" if request.operation == "CREATE" else "scaling up"
    what = f"{verb} GPU {kind} {_name(request)!r} to {replicas} replicas"
    return _deny(tenant, "gpu-scale-up", what, request.namespace)


def _scale(
    request: AdmissionRequest, context: ReviewContext, kind: str, workload: Workload | None
) -> Verdict | WorkloadNeeded:
    if request.operation != "UPDATE" or request.object is None:
        return Verdict(True, "not-update")
    # A Scale's spec.replicas is omitted when 0 (omitempty).
    replicas, before = _replicas(request.object, 0), _replicas(request.old_object, 0)
    if replicas <= 0 or replicas <= before:
        return Verdict(True, "not-raising")
    tenant = _suspended_owner(context, request.namespace, None)
    if tenant is None:
        return Verdict(True, "not-suspended")
    what = f"scaling {kind} {_name(request)!r} to {replicas} replicas"
    recorded = tenant.status.suspended_workloads if tenant.status is not None else []
    if any(
        w.kind == kind and w.namespace == request.namespace and w.name == request.name
        for w in recorded
    ):
        return _deny(tenant, "suspended-workload-scale-up", what, request.namespace)
    if workload is None:
        return WorkloadNeeded(kind, request.namespace, request.name)
    if workload.obj is None:
        return Verdict(True, "workload-gone")
    if not selects(tenant, pod_template_labels(kind, workload.obj)):
        return Verdict(True, "not-selected")
    if not context.gpu.requests_gpu(pod_template_spec(kind, workload.obj)):
        return Verdict(True, "not-gpu")
    return _deny(tenant, "gpu-scale-up", f"{what} (it requests a GPU)", request.namespace)


def _runs(obj: Mapping[str, Any] | None) -> bool:
    """A Job or CronJob runs pods unless `spec.suspend` is true."""
    spec = (obj or {}).get("spec")
    return not (isinstance(spec, Mapping) and spec.get("suspend") is True)


def _suspendable(request: AdmissionRequest, context: ReviewContext, kind: str) -> Verdict:
    obj = request.object
    if request.operation not in ("CREATE", "UPDATE") or obj is None:
        return Verdict(True, "not-create-or-update")
    if not context.gpu.requests_gpu(pod_template_spec(kind, obj)):
        return Verdict(True, "not-gpu")
    if not _runs(obj):
        return Verdict(True, "suspended")
    old = request.old_object if request.operation == "UPDATE" else None
    if old is not None and _runs(old) and context.gpu.requests_gpu(pod_template_spec(kind, old)):
        return Verdict(True, "already-running")
    tenant = _suspended_owner(context, request.namespace, pod_template_labels(kind, obj))
    if tenant is None:
        return Verdict(True, "not-suspended")
    if request.operation == "CREATE":
        what = f"creating GPU {kind} {_name(request)!r} unsuspended"
    elif old is not None and not _runs(old):
        what = f"unsuspending GPU {kind} {_name(request)!r}"
    else:
        what = f"making {kind} {_name(request)!r} request a GPU"
    return _deny(tenant, "gpu-unsuspend", what, request.namespace)


def _name(request: AdmissionRequest) -> str:
    name = request.name
    if not name and request.object is not None:
        meta = request.object.get("metadata")
        if isinstance(meta, Mapping):
            name = _str(meta.get("name")) or (_str(meta.get("generateName")) + "*")
    return _short(name or "?")


def _short(text: str, limit: int = _MAX_NAME) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _money(amount: Decimal | None, currency: str) -> str:
    if amount is None:
        return "?"
    return f"{format_decimal(amount)} {currency}".strip()


def denial_message(tenant: Tenant, what: str, namespace: str) -> str:
    """`what` (e.g. "creating pod 'x' requesting nvidia.com/gpu") denied, and why."""
    status = tenant.status
    enforcement = status.enforcement if status is not None else None
    currency = (status.currency if status is not None else None) or ""
    limit: Decimal | None = None
    spent: Decimal | None = None
    if status is not None and status.budget is not None:
        limit, spent = status.budget.limit, status.budget.used
    if enforcement is not None and enforcement.limit is not None:
        limit = enforcement.limit
    if limit is None and tenant.spec.budget is not None:
        limit = tenant.spec.budget.limit
    if spent is None and status is not None and status.total is not None:
        spent = max(status.total, Decimal(0))
    trigger = enforcement.trigger if enforcement is not None else ""
    why = _TRIGGERS.get(trigger, trigger or "its budget is spent")
    period = f" in {enforcement.period}" if enforcement is not None else ""
    name = _short(tenant.name)
    limit_text = f"limit {_money(limit, currency)}" if limit is not None else "no budget limit"
    message = (
        f"kubemeter: {what} in namespace {namespace!r} is denied: tenant {name!r} is "
        f"suspended because {why} (spent {_money(spent, currency)}{period}, {limit_text}). "
        f"To lift it: raise spec.budget.limit (kubectl edit tenant {name}), top up the "
        f"wallet (kubemeter wallet topup {name} AMOUNT --currency {currency or 'CUR'} "
        f"--key KEY), or set spec.budget.enforcement to alert."
    )
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _deny(tenant: Tenant, why: str, what: str, namespace: str) -> Verdict:
    return Verdict(False, why, denial_message(tenant, what, _short(namespace)), tenant.name)


def review_response(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview v1 response body for `verdict` (its uid echoes the request's)."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": verdict.message}
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}
