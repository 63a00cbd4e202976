"""The admission decision, rule by rule: what a suspended tenant may not start (GPU pods,
GPU scale-ups, unsuspended GPU Jobs and CronJobs), and everything it still may."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from unit.admission.admission_fakes import (
    ACME,
    GLOBEX,
    ONE_GPU,
    OPERATOR,
    body,
    container,
    context,
    deployment,
    job,
    pod,
    scale,
    tenant,
)

from kubemeter_operator.admission.review import (
    MAX_MESSAGE,
    AdmissionRequest,
    ReviewContext,
    Verdict,
    Workload,
    WorkloadNeeded,
    parse_review,
    review,
    review_response,
)
from kubemeter_operator.errors import InputError
from kubemeter_operator.kube.gpu import GpuResources


def decide(ctx: ReviewContext, review_body: dict[str, Any], **kw: Any) -> Verdict:
    outcome = review(parse_review(review_body), ctx, **kw)
    assert isinstance(outcome, Verdict), outcome
    return outcome


def denied(ctx: ReviewContext, review_body: dict[str, Any], **kw: Any) -> Verdict:
    verdict = decide(ctx, review_body, **kw)
    assert not verdict.allowed, verdict
    return verdict


def allowed(ctx: ReviewContext, review_body: dict[str, Any], **kw: Any) -> Verdict:
    verdict = decide(ctx, review_body, **kw)
    assert verdict.allowed, verdict
    return verdict


# -- pods ---------------------------------------------------------------------------------


def test_gpu_pod_in_a_suspended_tenants_namespace_is_denied_naming_tenant_limit_and_spend():
    verdict = denied(context(ACME), body("CREATE", pod("llm")))
    assert verdict.tenant == "acme"
    msg = verdict.message
    assert "'acme'" in msg
    assert "1000 USD" in msg, msg  # the limit
    assert "1012.40 USD" in msg  # spent
    assert "'llm'" in msg
    assert "nvidia.com/gpu" in msg
    assert "'acme-prod'" in msg
    assert "spec.budget.limit" in msg
    assert "kubemeter wallet topup acme" in msg
    assert "spec.budget.enforcement to alert" in msg
    assert len(msg) <= MAX_MESSAGE


def test_gpu_pod_is_denied_while_suspending_too():
    verdict = denied(context(tenant("acme", ["acme-prod"], state="Suspending")),
                     body("CREATE", pod()))  # fmt: skip
    assert verdict.why == "gpu-pod"


@pytest.mark.parametrize("state", ["Restoring", "Restored", None])
def test_gpu_pod_of_a_tenant_not_suspended_is_allowed(state: str | None):
    allowed(context(tenant("acme", ["acme-prod"], state=state)), body("CREATE", pod()))


def test_gpu_pod_in_every_owned_namespace_is_denied_and_elsewhere_allowed():
    ctx = context(ACME, GLOBEX)
    denied(ctx, body("CREATE", pod(), namespace="acme-dev"))
    allowed(ctx, body("CREATE", pod(), namespace="globex-ml"))
    allowed(ctx, body("CREATE", pod(), namespace="nobody"))


def test_non_gpu_pod_is_allowed_in_a_suspended_tenant():
    allowed(context(ACME), body("CREATE", pod(gpus=None)))
    allowed(context(ACME), body("CREATE", pod(gpus={"cpu": "4", "memory": "8Gi"})))


def test_a_zero_gpu_request_is_not_a_gpu():
    allowed(context(ACME), body("CREATE", pod(gpus={"nvidia.com/gpu": "0"})))


def test_mig_slices_and_init_containers_count_as_gpus():
    denied(context(ACME), body("CREATE", pod(gpus={"nvidia.com/mig-1g.10gb": 1})))
    p = pod(gpus=None)
    p["spec"]["initContainers"] = [container({"nvidia.com/gpu": "1"})]
    denied(context(ACME), body("CREATE", p))


def test_configured_gpu_resources_decide_what_is_a_gpu():
    ctx = ReviewContext({"acme": ACME}, GpuResources(("amd.com/gpu",)), ())
    denied(ctx, body("CREATE", pod(gpus={"amd.com/gpu": 1})))
    allowed(ctx, body("CREATE", pod(gpus=ONE_GPU)))


def test_pod_updates_and_deletes_are_allowed():
    allowed(context(ACME), body("UPDATE", pod(), pod()))
    allowed(context(ACME), body("DELETE", None, pod()))


def test_pod_subresources_are_allowed():
    allowed(context(ACME), body("CREATE", pod(), sub="binding"))


def test_pod_selector_decides_which_pods_are_the_tenants():
    acme = tenant("acme", ["acme-prod"], selector={"matchLabels": {"team": "acme"}})
    denied(context(acme), body("CREATE", pod(team="acme")))
    allowed(context(acme), body("CREATE", pod(team="other")))
    allowed(context(acme), body("CREATE", pod()))


def test_a_shared_namespace_belongs_to_the_tenant_metering_bills():
    # usage.tenancy: the earliest-created claimant owns it (same creation time: by name)
    later = tenant("other", ["acme-prod"], state=None)
    earlier = tenant("aaa", ["acme-dev"], state=None)
    ctx = context(ACME, later, earlier)
    denied(ctx, body("CREATE", pod(), namespace="acme-prod"))  # acme's: acme is suspended
    allowed(ctx, body("CREATE", pod(), namespace="acme-dev"))  # aaa's: aaa is not


def test_the_exempt_user_is_always_allowed():
    ctx = context(ACME)
    allowed(ctx, body("CREATE", pod(), user=OPERATOR))
    allowed(ctx, body("UPDATE", scale(3), scale(0), resource="Deployment", sub="scale",
                      user=OPERATOR))  # fmt: skip
    assert decide(ctx, body("CREATE", pod(), user=OPERATOR)).why == "exempt-user"
    denied(context(ACME, exempt=()), body("CREATE", pod(), user=OPERATOR))


def test_a_generate_name_pod_is_named_in_the_message():
    p = pod()
    p["metadata"] = {"generateName": "infer-7d9c-"}
    assert "infer-7d9c-*" in denied(context(ACME), body("CREATE", p)).message


# -- deployments and statefulsets ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_creating_a_gpu_workload_with_replicas_is_denied(kind: str):
    verdict = denied(context(ACME), body("CREATE", deployment(2, kind=kind)))
    assert f"GPU {kind}" in verdict.message
    assert "2 replicas" in verdict.message


def test_creating_a_gpu_deployment_without_replicas_means_one_and_is_denied():
    denied(context(ACME), body("CREATE", deployment(None)))


def test_creating_a_gpu_deployment_at_zero_replicas_is_allowed():
    allowed(context(ACME), body("CREATE", deployment(0)))


def test_creating_a_non_gpu_deployment_is_allowed():
    allowed(context(ACME), body("CREATE", deployment(5, gpus=None)))


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_raising_gpu_replicas_is_denied(kind: str):
    denied(context(ACME), body("UPDATE", deployment(1, kind=kind), deployment(0, kind=kind)))
    denied(context(ACME), body("UPDATE", deployment(3, kind=kind), deployment(2, kind=kind)))


def test_keeping_or_lowering_gpu_replicas_is_allowed():
    allowed(context(ACME), body("UPDATE", deployment(2), deployment(2)))
    allowed(context(ACME), body("UPDATE", deployment(1), deployment(2)))
    allowed(context(ACME), body("UPDATE", deployment(0), deployment(2)))


def test_a_template_that_starts_requesting_a_gpu_is_a_scale_up_from_zero():
    denied(context(ACME), body("UPDATE", deployment(2), deployment(2, gpus=None)))
    allowed(context(ACME), body("UPDATE", deployment(2, gpus=None), deployment(2)))


def test_workload_pod_selector_uses_the_template_labels():
    acme = tenant("acme", ["acme-prod"], selector={"matchExpressions": [
        {"key": "team", "operator": "In", "values": ["acme"]}]})  # fmt: skip
    denied(context(acme), body("CREATE", deployment(1, team="acme")))
    allowed(context(acme), body("CREATE", deployment(1, team="globex")))


def test_deployment_status_subresource_is_allowed():
    allowed(context(ACME), body("UPDATE", deployment(3), deployment(0), sub="status"))


def test_deployment_in_a_tenant_not_suspended_is_allowed():
    allowed(context(ACME, GLOBEX), body("CREATE", deployment(4), namespace="globex-ml"))


# -- the scale subresource -------------------------------------------------------------------


def scale_body(new: int, old: int, kind: str = "Deployment", **kw: Any) -> dict[str, Any]:
    return body("UPDATE", scale(new), scale(old), resource=kind, sub="scale", **kw)


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_scaling_a_recorded_suspended_workload_up_is_denied_without_a_lookup(kind: str):
    acme = tenant("acme", ["acme-prod"], suspended=[
        {"kind": kind, "namespace": "acme-prod", "name": "infer", "replicas": 3}])  # fmt: skip
    verdict = denied(context(acme), scale_body(3, 0, kind))
    assert verdict.why == "suspended-workload-scale-up"
    assert "3 replicas" in verdict.message


def test_scaling_up_an_unrecorded_workload_asks_for_it_then_decides_by_its_template():
    req = parse_review(scale_body(3, 0))
    need = review(req, context(ACME))
    assert need == WorkloadNeeded("Deployment", "acme-prod", "infer")
    gpu = review(req, context(ACME), workload=Workload(deployment(0)))
    assert isinstance(gpu, Verdict)
    assert not gpu.allowed
    cpu = review(req, context(ACME), workload=Workload(deployment(0, gpus=None)))
    assert isinstance(cpu, Verdict)
    assert cpu.allowed
    gone = review(req, context(ACME), workload=Workload(None))
    assert isinstance(gone, Verdict)
    assert gone.allowed


def test_scale_lookup_respects_the_pod_selector():
    acme = tenant("acme", ["acme-prod"], selector={"matchLabels": {"team": "acme"}})
    req = parse_review(scale_body(2, 1))
    theirs = review(req, context(acme), workload=Workload(deployment(1, team="globex")))
    assert isinstance(theirs, Verdict)
    assert theirs.allowed
    ours = review(req, context(acme), workload=Workload(deployment(1, team="acme")))
    assert isinstance(ours, Verdict)
    assert not ours.allowed


def test_scaling_down_or_to_the_same_replicas_never_needs_a_lookup():
    for new, old in ((0, 3), (2, 3), (3, 3), (0, 0)):
        allowed(context(ACME), scale_body(new, old))


def test_scaling_in_a_namespace_no_suspended_tenant_owns_is_allowed_without_a_lookup():
    allowed(context(ACME, GLOBEX), scale_body(5, 0, namespace="globex-ml"))
    allowed(context(ACME), scale_body(5, 0, namespace="elsewhere"))


def test_scale_of_other_resources_is_allowed():
    allowed(context(ACME), body("UPDATE", scale(3), scale(0), resource="Job", sub="scale"))


# -- jobs and cronjobs -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_creating_an_unsuspended_gpu_job_is_denied(kind: str):
    denied(context(ACME), body("CREATE", job(None, kind=kind)))
    denied(context(ACME), body("CREATE", job(False, kind=kind)))


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_creating_a_suspended_gpu_job_is_allowed(kind: str):
    allowed(context(ACME), body("CREATE", job(True, kind=kind)))


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_unsuspending_a_gpu_job_is_denied(kind: str):
    verdict = denied(context(ACME), body("UPDATE", job(False, kind=kind), job(True, kind=kind)))
    assert f"unsuspending GPU {kind}" in verdict.message
    denied(context(ACME), body("UPDATE", job(None, kind=kind), job(True, kind=kind)))


def test_other_job_updates_are_allowed():
    allowed(context(ACME), body("UPDATE", job(False), job(False)))  # already running
    allowed(context(ACME), body("UPDATE", job(True), job(False)))  # suspending
    allowed(context(ACME), body("UPDATE", job(True), job(True)))


def test_a_cronjob_template_that_starts_requesting_a_gpu_is_denied():
    denied(context(ACME), body("UPDATE", job(False, kind="CronJob"),
                               job(False, kind="CronJob", gpus=None)))  # fmt: skip


def test_non_gpu_jobs_are_allowed():
    allowed(context(ACME), body("CREATE", job(None, gpus=None)))
    allowed(context(ACME), body("UPDATE", job(False, gpus=None), job(True, gpus=None)))


def test_job_pod_selector_uses_the_template_labels():
    acme = tenant("acme", ["acme-prod"], selector={"matchLabels": {"team": "acme"}})
    allowed(context(acme), body("CREATE", job(None, kind="CronJob", team="x")))
    denied(context(acme), body("CREATE", job(None, kind="CronJob", team="acme")))


# -- other kinds, messages, malformed requests -----------------------------------------------


def test_other_kinds_are_allowed():
    cm = {"kind": "ConfigMap", "metadata": {"name": "c"}}
    req = body("CREATE", cm)
    req["request"]["resource"] = {"group": "", "version": "v1", "resource": "configmaps"}
    allowed(context(ACME), req)


def test_the_message_explains_each_trigger():
    wallet = tenant("acme", ["acme-prod"], trigger="walletEmpty")
    assert "prepaid wallet is empty" in denied(context(wallet), body("CREATE", pod())).message
    forecast = tenant("acme", ["acme-prod"], trigger="budgetForecast")
    assert "stopBefore" in denied(context(forecast), body("CREATE", pod())).message


def test_the_message_stays_short_with_the_longest_names():
    long = "a" * 250
    t = tenant(long, ["n" * 63])
    p = pod("p" * 253)
    msg = denied(context(t), body("CREATE", p, namespace="n" * 63)).message
    assert len(msg) <= MAX_MESSAGE
    assert "spec.budget.enforcement to alert" in msg  # the way out survives the shortening


def test_the_message_without_budget_status_falls_back_to_spec_and_total():
    t = tenant("acme", ["acme-prod"])
    assert t.status is not None
    t.status.budget = None
    t.status.enforcement.limit = None  # type: ignore[union-attr]
    msg = denied(context(t), body("CREATE", pod())).message
    assert "limit 1000 USD" in msg
    assert "spent 1012.40 USD" in msg


def test_the_response_echoes_the_uid_and_carries_the_denial():
    req = body("CREATE", pod())
    verdict = denied(context(ACME), req)
    out = review_response(req["request"]["uid"], verdict)
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == req["request"]["uid"]
    assert out["response"]["allowed"] is False
    assert out["response"]["status"]["code"] == 403
    assert out["response"]["status"]["message"] == verdict.message
    ok = review_response("u-1", Verdict(True, "not-gpu"))
    assert ok["response"] == {"uid": "u-1", "allowed": True}


def _broken(path: list[str], value: Any) -> dict[str, Any]:
    b = copy.deepcopy(body("CREATE", pod()))
    target: Any = b
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return b


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ([], ""),
        (_broken(["apiVersion"], "admission.k8s.io/v1beta1"), "apiVersion"),
        (_broken(["kind"], "Pod"), "apiVersion/kind"),
        (_broken(["request"], KeyError), "request"),
        (_broken(["request"], "x"), "request"),
        (_broken(["request", "uid"], KeyError), "request.uid"),
        (_broken(["request", "uid"], ""), "request.uid"),
        (_broken(["request", "operation"], 3), "request.operation"),
        (_broken(["request", "resource"], "pods"), "request.resource"),
        (_broken(["request", "kind"], None), "request.kind"),
        (_broken(["request", "userInfo"], "alice"), "request.userInfo"),
        (_broken(["request", "object"], [1]), "request.object"),
        (_broken(["request", "oldObject"], "x"), "request.oldObject"),
    ],
)
def test_malformed_reviews_are_input_errors_naming_the_field(broken: Any, field: str):
    with pytest.raises(InputError) as err:
        parse_review(broken)
    assert err.value.field.startswith(field)


def test_odd_fields_inside_objects_are_tolerated():
    p = pod()
    p["spec"]["containers"] = "not a list"
    allowed(context(ACME), body("CREATE", p))
    d = deployment(2)
    d["spec"]["replicas"] = "two"  # counts as the default, 1
    denied(context(ACME), body("CREATE", d))
    weird = body("CREATE", pod())
    weird["request"]["object"] = {"kind": "Pod", "metadata": "x", "spec": None}
    allowed(context(ACME), weird)


def test_parse_reads_the_request_fields():
    req = parse_review(scale_body(3, 1, "StatefulSet"))
    assert req == AdmissionRequest(
        uid="705ab4f5-6393-11e8-b7cc-42010a800002", operation="UPDATE", group="apps",
        resource="statefulsets", sub_resource="scale", kind="Scale", namespace="acme-prod",
        name="infer", username="alice", object=scale(3), old_object=scale(1),
    )  # fmt: skip
