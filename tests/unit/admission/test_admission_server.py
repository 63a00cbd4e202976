"""The webhook's HTTP face in-process (aiohttp's test server): AdmissionReview in and out
with the uid echoed, 400 for bad JSON or a body that is no AdmissionReview, 413 for a huge
body, 500 (so the API server applies failurePolicy) when the workload lookup fails; and the
webhook runtime with fake API ports: certificate, caBundle, exempt user, renewal reload."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient, TestServer
from unit.admission.admission_fakes import (
    ACME,
    GLOBEX,
    OPERATOR,
    FakeConfigs,
    FakeNamespaces,
    FakeSecrets,
    body,
    deployment,
    pod,
    scale,
)

from kubemeter_operator.admission import certs
from kubemeter_operator.admission.server import Reviewer, create_app
from kubemeter_operator.admission.webhook import AdmissionPorts, AdmissionSettings, AdmissionWebhook
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import PermanentError, TransientError
from kubemeter_operator.kube.gpu import GpuResources

T = TypeVar("T")
TENANTS = {"acme": ACME, "globex": GLOBEX}


def run(fn: Callable[[TestClient[Any, Any]], Awaitable[T]], reviewer: Reviewer) -> T:
    async def main() -> T:
        async with TestClient(TestServer(create_app(reviewer, max_body_bytes=64 * 1024))) as c:
            return await fn(c)

    return asyncio.run(main())


def reviewer(lookup_result: Any = None, lookups: list[tuple[str, str, str]] | None = None):
    async def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        if lookups is not None:
            lookups.append((kind, namespace, name))
        if isinstance(lookup_result, Exception):
            raise lookup_result
        return lookup_result  # type: ignore[no-any-return]

    return Reviewer(lambda: TENANTS, GpuResources(), lookup=lookup, exempt_users={OPERATOR})


async def post(c: TestClient[Any, Any], data: Any) -> tuple[int, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    resp = await c.post("/validate", data=raw, headers={"Content-Type": "application/json"})
    return resp.status, await resp.json()


def test_a_denial_comes_back_as_an_admission_review_with_the_uid():
    req = body("CREATE", pod())
    status, out = run(lambda c: post(c, req), reviewer())
    assert status == 200
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == req["request"]["uid"]
    assert out["response"]["allowed"] is False
    assert "tenant 'acme'" in out["response"]["status"]["message"]


def test_an_allowed_request_is_allowed():
    status, out = run(lambda c: post(c, body("CREATE", pod(gpus=None))), reviewer())
    assert status == 200
    assert out["response"]["allowed"] is True


def test_a_scale_request_reads_the_workload_once():
    lookups: list[tuple[str, str, str]] = []
    req = body("UPDATE", scale(3), scale(0), resource="Deployment", sub="scale")
    _, out = run(lambda c: post(c, req), reviewer(deployment(0), lookups))
    assert out["response"]["allowed"] is False
    assert lookups == [("Deployment", "acme-prod", "infer")]


def test_a_failed_lookup_is_500_so_the_failure_policy_decides():
    req = body("UPDATE", scale(3), scale(0), resource="Deployment", sub="scale")
    status, out = run(lambda c: post(c, req), reviewer(TransientError("apiserver away")))
    assert status == 500
    assert "apiserver away" in out["error"]


def test_bad_json_is_400_with_a_clear_error():
    status, out = run(lambda c: post(c, b"{not json"), reviewer())
    assert status == 400
    assert out["error"].startswith("the body is not JSON")
    status, out = run(lambda c: post(c, b"\xff\xfe"), reviewer())
    assert status == 400


def test_a_body_that_is_no_admission_review_is_400_naming_the_field():
    status, out = run(lambda c: post(c, {"kind": "Pod"}), reviewer())
    assert status == 400
    assert "apiVersion" in out["error"]
    broken = body("CREATE", pod())
    del broken["request"]["uid"]
    status, out = run(lambda c: post(c, broken), reviewer())
    assert status == 400
    assert "request.uid" in out["error"]


def test_a_huge_body_is_413():
    status, out = run(lambda c: post(c, b"[" + b"1," * 40_000 + b"1]"), reviewer())
    assert status == 413
    assert "larger than" in out["error"]


def test_healthz_and_only_post_validate():
    async def calls(c: TestClient[Any, Any]) -> tuple[int, int]:
        health = await c.get("/healthz")
        wrong = await c.get("/validate")
        return health.status, wrong.status

    assert run(calls, reviewer()) == (200, 405)


# -- the runtime, with fake API ports ---------------------------------------------------


def settings(**kw: Any) -> AdmissionSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "webhook_name": "kubemeter-admission",
        "cert_namespace": "kubemeter", "cert_name": "km-admission-cert",
        "hosts": ("127.0.0.1",), "gpu": GpuResources(), "retry_s": 0.05,
        "label_interval_s": 0.05,
    }  # fmt: skip
    values.update(kw)
    return AdmissionSettings(**values)


def ports(
    secrets: FakeSecrets, configs: FakeConfigs, namespaces: FakeNamespaces, who: Any = "me"
) -> AdmissionPorts:
    async def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    def whoami() -> str:
        if isinstance(who, Exception):
            raise who
        return str(who)

    return AdmissionPorts(secrets, configs, namespaces, lookup, whoami)


def test_start_creates_the_certificate_sets_the_ca_bundle_and_labels_namespaces():
    secrets, configs = FakeSecrets(), FakeConfigs({"gpu.kubemeter.dev": ""})
    namespaces = FakeNamespaces({"acme-prod": None, "acme-dev": None, "stale": "old"})
    tenants: dict[str, Tenant] = {"acme": ACME}

    async def main() -> None:
        hook = AdmissionWebhook(settings(), ports(secrets, configs, namespaces),
                                tenants=lambda: tenants, leading=lambda: True)  # fmt: skip
        await hook.start()
        try:
            assert hook.port > 0
            assert hook.exempt_users == {"me"}
            for _ in range(100):
                if namespaces.state.get("stale") is None and namespaces.state["acme-dev"]:
                    break
                await asyncio.sleep(0.02)
        finally:
            await hook.stop()

    asyncio.run(main())
    assert secrets.data is not None
    bundle = certs.from_secret_data(secrets.data)
    assert configs.bundles == {"gpu.kubemeter.dev": base64.b64encode(bundle.ca_pem).decode()}
    assert namespaces.state == {"acme-prod": "acme", "acme-dev": "acme", "stale": None}


def test_a_standby_serves_but_does_not_label_and_an_unknown_username_is_not_fatal():
    secrets, configs = FakeSecrets(), FakeConfigs(None)  # no configuration yet
    namespaces = FakeNamespaces({"acme-prod": None})

    async def main() -> None:
        hook = AdmissionWebhook(
            settings(), ports(secrets, configs, namespaces, who=PermanentError("403")),
            tenants=lambda: {"acme": ACME}, leading=lambda: False,
        )  # fmt: skip
        await hook.start()
        await asyncio.sleep(0.2)
        configs.bundles = {"gpu.kubemeter.dev": ""}  # the chart installs it now
        await asyncio.sleep(0.2)
        await hook.stop()
        assert hook.exempt_users == frozenset()

    asyncio.run(main())
    assert namespaces.state == {"acme-prod": None}
    assert configs.bundles is not None
    assert configs.bundles["gpu.kubemeter.dev"]


def test_refresh_reloads_a_certificate_another_replica_renewed():
    secrets, configs = FakeSecrets(), FakeConfigs({"gpu.kubemeter.dev": ""})
    clock = [datetime.now(UTC)]

    async def main() -> None:
        hook = AdmissionWebhook(
            settings(exempt_username=OPERATOR), ports(secrets, configs, FakeNamespaces({})),
            tenants=dict, leading=lambda: True, clock=lambda: clock[0],
        )  # fmt: skip
        await hook.start()
        try:
            assert hook.tls is not None
            assert hook.exempt_users == {OPERATOR}
            first = hook.tls.bundle
            renewed = certs.renew(first, ["127.0.0.1"], clock[0])
            secrets.data, secrets.version = certs.to_secret_data(renewed), secrets.version + 1
            assert await hook.refresh() is True
            assert hook.tls.bundle == renewed
            clock[0] = first.cert.not_valid_after_utc - timedelta(days=1)
            assert await hook.refresh() is True
            assert hook.tls.bundle not in (first, renewed)  # renewed by this replica
        finally:
            await hook.stop()

    asyncio.run(main())
