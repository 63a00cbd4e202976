"""The webhook's HTTPS endpoint (aiohttp): AdmissionReview v1 in, AdmissionReview out.

    app = create_app(Reviewer(tenants, gpu, exempt_users={"system:serviceaccount:..."},
                              lookup=workload_lookup))
    runner = await serve(app, host="0.0.0.0", port=8443, ssl_context=tls.context)

- `POST /validate`: the API server's call. The answer echoes the request's uid. A body
  over `MAX_BODY_BYTES` is 413, a body that is not JSON or not an AdmissionReview v1 is 400
  with a JSON `error` naming the problem. When the decision needs the API server (the
  workload behind a Scale request) and it cannot be asked, the answer is 500: the API
  server then applies the webhook's failurePolicy, the cluster admin's choice of failing
  open or closed.
- `GET /healthz`: 200 while the server runs.

This module must never crash on what a client sends, answer without a uid echo, or serve
plain HTTP.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web

from kubemeter_operator.admission.review import (
    AdmissionRequest,
    ReviewContext,
    Verdict,
    Workload,
    WorkloadNeeded,
    parse_review,
    review,
    review_response,
)
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import InputError, KubemeterError
from kubemeter_operator.kube.gpu import GpuResources

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024
"""The API server's own request limit: an AdmissionReview holds an object and its old one."""

WorkloadLookup = Callable[[str, str, str], Awaitable[Mapping[str, Any] | None]]
"""(kind, namespace, name) -> the Deployment or StatefulSet, None when it does not exist;
raises KubemeterError when the API server cannot be asked."""


class Reviewer:
    """`review` against the current Tenants, with the workload lookup a Scale request needs."""

    def __init__(
        self,
        tenants: Callable[[], Mapping[str, Tenant]],
        gpu: GpuResources,
        *,
        lookup: WorkloadLookup,
        exempt_users: Collection[str] = (),
    ) -> None:
        self.tenants = tenants
        self.gpu = gpu
        self.lookup = lookup
        self.exempt_users = frozenset(exempt_users)

    async def __call__(self, request: AdmissionRequest) -> Verdict:
        context = ReviewContext(self.tenants(), self.gpu, self.exempt_users)
        outcome = review(request, context)
        if isinstance(outcome, WorkloadNeeded):
            obj = await self.lookup(outcome.kind, outcome.namespace, outcome.name)
            outcome = review(request, context, workload=Workload(obj))
        if isinstance(outcome, WorkloadNeeded):  # pragma: no cover - review answers it
            raise RuntimeError("review asked for the workload twice")
        return outcome


Decide = Callable[[AdmissionRequest], Awaitable[Verdict]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def create_app(decide: Decide, *, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
    async def validate(http: web.Request) -> web.Response:
        try:
            raw = await http.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is larger than {max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"the body is not JSON: {str(exc)[:200]}")
        try:
            request = parse_review(body)
        except InputError as exc:
            return _error(400, f"not an AdmissionReview v1: {exc}")
        try:
            verdict = await decide(request)
        except KubemeterError as exc:
            log.warning("admission %s %s/%s: cannot decide: %s", request.operation,
                        request.namespace, request.name, exc)  # fmt: skip
            return _error(500, f"cannot decide: {str(exc)[:300]}")
        if not verdict.allowed:
            log.info(
                "admission denied %s %s%s %s/%s by %s for tenant %s (%s)",
                request.operation, request.resource,
                f"/{request.sub_resource}" if request.sub_resource else "",
                request.namespace, request.name, request.username, verdict.tenant, verdict.why,
            )  # fmt: skip
        return web.json_response(review_response(request.uid, verdict))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/validate", validate)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    keepalive_timeout_s: float = 30.0,
) -> web.AppRunner:
    """Serve `app` over HTTPS on the running loop (`port=0`: a free one, see `bound_port`);
    `await runner.cleanup()` stops it."""
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=5.0, keepalive_timeout=keepalive_timeout_s
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=256).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the admission webhook is not listening on a TCP port")
