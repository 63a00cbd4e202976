"""Bearer tokens: header parsing, the digest index, the static and the Kubernetes-backed
token stores (the latter with an in-memory Secret reader; no API server needed).

Tokens read from Secrets must be strong (`token_weakness`), so those tests use `strong(...)`
tokens; the weak-token rule itself is tested in `test_events_api_hardening.py`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import pytest

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import TransientError
from kubemeter_operator.events_api import (
    KubernetesTokenStore,
    StaticTokenStore,
    TokenIndex,
    bearer_token,
    token_digest,
    token_weakness,
)


def tenant(name: str, secret: str | None = None, key: str = "token") -> Tenant:
    spec: dict[str, Any] = {"pricePlanRef": {"name": "standard"}, "namespaces": [name]}
    if secret is not None:
        spec["apiTokenSecretRef"] = {"namespace": "kubemeter", "name": secret, "key": key}
    return Tenant.model_validate({"metadata": {"name": name}, "spec": spec})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def strong(seed: str) -> str:
    """A strong, deterministic token (43 base64url characters of a SHA-256)."""
    token = base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()).decode()
    token = token.rstrip("=")
    assert token_weakness(token) is None
    return token


ACME, GLOBEX, INITECH = strong("acme"), strong("globex"), strong("initech")
OLD, NEW = strong("old"), strong("new")


class Secrets:
    """Secrets by (namespace, name) -> data; counts reads; can be made unavailable."""

    def __init__(self, secrets: Mapping[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = dict(secrets)
        self.reads = 0
        self.down = False

    def __call__(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        if self.down:
            raise TransientError("API server unavailable")
        return self.secrets.get((namespace, name))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_index_keeps_only_digests_and_refuses_shared_tokens() -> None:
    index = TokenIndex.from_tokens({"a": "tok-a", "b": "shared", "c": "shared", "d": ""})
    assert index.lookup("tok-a") == "a"
    assert index.lookup("shared") is None
    assert index.lookup("") is None
    assert index.ambiguous == {"b", "c"}
    assert index.tenants() == {"a"}
    assert "tok-a" not in repr(vars(index))
    assert repr(token_digest("tok-a")) in repr(vars(index))


def test_static_store() -> None:
    store = StaticTokenStore({"acme": "t1"})
    assert asyncio.run(store.authenticate("t1")) == "acme"
    assert asyncio.run(store.authenticate("t2")) is None
    store.set_token("globex", "t2")
    assert asyncio.run(store.authenticate("t2")) == "globex"
    assert "t2" not in repr(vars(store))
    with pytest.raises(ValueError):
        store.set_token("x", "")


def make_store(
    tenants: dict[str, Tenant], secrets: Secrets, clock: Clock | None = None
) -> KubernetesTokenStore:
    return KubernetesTokenStore(
        lambda: tenants, secrets, monotonic=clock or Clock(), miss_refresh_interval_s=5
    )


def test_kubernetes_store_reads_the_referenced_secrets() -> None:
    tenants = {
        "acme": tenant("acme", "acme-token"),
        "globex": tenant("globex", "shared", key="globex"),
        "initech": tenant("initech", "shared", key="initech"),
        "nokey": tenant("nokey", "shared", key="missing"),
        "nosecret": tenant("nosecret", "gone"),
        "none": tenant("none"),
    }
    secrets = Secrets(
        {
            ("kubemeter", "acme-token"): {"token": b64(ACME + "\n")},
            ("kubemeter", "shared"): {"globex": b64(GLOBEX), "initech": b64(INITECH)},
        }
    )
    store = make_store(tenants, secrets)

    async def scenario() -> list[str | None]:
        return [await store.authenticate(t) for t in (ACME, GLOBEX, INITECH, strong("nope"))]

    assert asyncio.run(scenario()) == ["acme", "globex", "initech", None]
    assert secrets.reads == 3  # the shared Secret is read once; "none" has no ref
    assert set(store.problems) == {"nokey", "nosecret"}
    assert "not found" in store.problems["nosecret"]


def test_unknown_token_refreshes_at_most_every_few_seconds() -> None:
    tenants = {"acme": tenant("acme", "s")}
    secrets = Secrets({("kubemeter", "s"): {"token": b64(OLD)}})
    clock = Clock()
    store = make_store(tenants, secrets, clock)

    async def scenario() -> list[str | None]:
        out = [await store.authenticate(OLD)]
        secrets.secrets[("kubemeter", "s")] = {"token": b64(NEW)}
        clock.t += 1
        out.append(await store.authenticate(NEW))  # too soon to refresh again
        clock.t += 5
        out.append(await store.authenticate(NEW))  # refreshed on the miss
        out.append(await store.authenticate(OLD))  # rotated away
        return out

    assert asyncio.run(scenario()) == ["acme", None, "acme", None]


def test_api_server_hiccup_keeps_the_last_known_tokens() -> None:
    tenants = {"acme": tenant("acme", "s")}
    secrets = Secrets({("kubemeter", "s"): {"token": b64(ACME)}})
    store = make_store(tenants, secrets)

    async def scenario() -> list[str | None]:
        out = [await store.authenticate(ACME)]
        secrets.down = True
        await store.refresh()
        out.append(await store.authenticate(ACME))
        return out

    assert asyncio.run(scenario()) == ["acme", "acme"]
    assert "unavailable" in store.problems["acme"]


def test_never_loaded_is_transient() -> None:
    secrets = Secrets({})
    secrets.down = True
    store = make_store({"acme": tenant("acme", "s")}, secrets)
    with pytest.raises(TransientError):
        asyncio.run(store.authenticate(ACME))
    assert not store.loaded


def test_deleted_tenant_loses_its_token_on_refresh() -> None:
    tenants = {"acme": tenant("acme", "s")}
    secrets = Secrets({("kubemeter", "s"): {"token": b64(ACME)}})
    store = make_store(tenants, secrets)

    async def scenario() -> list[str | None]:
        out = [await store.authenticate(ACME)]
        del tenants["acme"]
        await store.refresh()
        out.append(await store.authenticate(ACME))
        return out

    assert asyncio.run(scenario()) == ["acme", None]


def test_run_refreshes_when_tenants_change() -> None:
    tenants: dict[str, Tenant] = {}
    secrets = Secrets({("kubemeter", "s"): {"token": b64(ACME)}})
    store = KubernetesTokenStore(
        lambda: tenants, secrets, refresh_interval_s=3600, miss_refresh_interval_s=3600
    )

    async def scenario() -> str | None:
        task = asyncio.create_task(store.run())
        try:
            while not store.loaded:
                await asyncio.sleep(0.01)
            tenants["acme"] = tenant("acme", "s")
            store.tenants_changed()
            for _ in range(200):
                if secrets.reads:
                    break
                await asyncio.sleep(0.01)
            return await store.authenticate(ACME)
        finally:
            task.cancel()

    assert asyncio.run(scenario()) == "acme"
