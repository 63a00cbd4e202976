"""Helpers of the notification tests: a real HTTP receiver, a clock, Tenants, Secrets.

- `Receiver`: an aiohttp server on 127.0.0.1 (its own event loop, in a thread) with one
  endpoint per name, `/hooks/<name>`, answering by a script (`fail`: 500, `hang`: no answer
  for `hang_s`, `accept`: 204, `redirect`: 307; the last step repeats). It verifies
  `X-Kubemeter-Signature` with the `verify` function of README.md's "Webhooks" section
  (executed from the README itself, so the README is what a receiver author reads) and
  accepts an event id once: a repeat is answered 200 but not accepted again.
- `readme_section`, `readme_verify`: README.md's "Webhooks" text and its `verify` example.
- `Clock`: a settable `now` for the ledger (created_at of notices).
- `tenant`, `Secrets` (a SecretReader), `RecordingPoster` (Kubernetes Events).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kubemeter_operator.api.tenant import Tenant

from support.paths import REPO_ROOT

Verify = Callable[..., bool]

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def readme_verify() -> Verify:
    """The Python verification example of README.md "Webhooks", executed as written."""
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Webhooks"), re.S)
    assert len(blocks) == 1, "the Webhooks section has one Python example"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "README.md#webhooks", "exec"), namespace)
    verify: Verify = namespace["verify"]
    return verify


@dataclass
class Request:
    name: str
    headers: dict[str, str]
    body: bytes
    signed: bool | None  # None: unsigned; True/False: whether the signature verified
    answer: str

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Endpoint:
    script: list[str]
    secret: bytes | None = None
    requests: list[Request] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Receiver:
    """A webhook receiver on a real socket (see the module docstring)."""

    def __init__(self, verify: Verify, hang_s: float = 2.0) -> None:
        self.verify = verify
        self.hang_s = hang_s
        self.now: float = T0.timestamp()
        """The receiver's clock (tests move it with the notifier's `now`)."""
        self.endpoints: dict[str, Endpoint] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port: int = self.runner.addresses[0][1]

    def endpoint(self, name: str, *script: str, secret: bytes | None = None) -> str:
        self.endpoints[name] = Endpoint(list(script) or ["accept"], secret)
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    def requests(self, name: str) -> list[Request]:
        return self.endpoints[name].requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        ep = self.endpoints[name]
        body = await request.read()
        header = request.headers.get("X-Kubemeter-Signature")
        signed = None
        if header is not None and ep.secret is not None:
            signed = self.verify(header, body, ep.secret, now=self.now)
        step = ep.script[min(len(ep.requests), len(ep.script) - 1)]
        record = Request(name, dict(request.headers), body, signed, step)
        ep.requests.append(record)
        if ep.secret is not None and not signed:
            record.answer = "refused"
            return web.Response(status=401, text="bad signature")
        if step == "fail":
            return web.Response(status=500, text="receiver broken\n" * 1000)
        if step == "redirect":
            raise web.HTTPTemporaryRedirect(f"/hooks/{name}-elsewhere")
        if step == "hang":
            await asyncio.sleep(self.hang_s)
            return web.Response(status=204)
        assert step == "accept", step
        event_id = json.loads(body)["id"]
        ep.accepted[event_id] += 1
        return web.Response(status=204 if ep.accepted[event_id] == 1 else 200)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def tenant(name: str, url: str | None = None, secret: str | None = None) -> Tenant:
    spec: dict[str, Any] = {"pricePlanRef": {"name": "std"}, "namespaces": [f"{name}-ns"]}
    if url is not None:
        spec["notification"] = {"webhookUrl": url}
        if secret is not None:
            spec["notification"]["secretRef"] = {"namespace": "kubemeter", "name": secret}
    return Tenant.model_validate({"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": spec})


class Secrets:
    """A SecretReader over a dict, returning base64 `data` as Kubernetes does."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.reads = 0

    def put(self, name: str, value: bytes, key: str = "token") -> None:
        self.data[("kubemeter", name)] = {key: base64.b64encode(value).decode()}

    def __call__(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        return self.data.get((namespace, name))


class RecordingPoster:
    """Records the Kubernetes Events the notifier posts."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    async def post_event(
        self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        assert obj["kind"] == "Tenant"
        assert obj["apiVersion"] == "kubemeter.dev/v1alpha1"
        self.events.append((obj["metadata"]["name"], reason, message, type_))
