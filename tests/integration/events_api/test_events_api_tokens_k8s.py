"""KubernetesTokenStore against a real API server: tokens come from the Secrets the Tenants
reference, read with the official client; rotation is picked up on refresh."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import pytest
from kubernetes import client, config

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.events_api import KubernetesTokenStore, kubernetes_secret_reader

from support.cluster import KubeCluster

pytestmark = pytest.mark.integration

# Tokens read from Secrets must be strong (>= 32 bytes, not a pattern or placeholder).
FIRST = "acme-1st-Zq8vN3kLx7TbW2pRf9HmC4sGj6Ud0oYe"
SECOND = "acme-2nd-Hc5tP1wQz9RkM7vXb3NfL8sJd2Ga6eUy"


def secret(namespace: str, name: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def tenant(name: str, namespace: str, secret_name: str) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "pricePlanRef": {"name": "standard"},
                "namespaces": [name],
                "apiTokenSecretRef": {"namespace": namespace, "name": secret_name},
            },
        }
    )


def test_tokens_from_real_secrets(kube_cluster: KubeCluster) -> None:
    ns = f"km-tokens-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl_ok("create", "namespace", ns)
    try:
        kube_cluster.apply(secret(ns, "acme-api", FIRST))
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kube_cluster.kubeconfig
        )
        reader = kubernetes_secret_reader(client.CoreV1Api(api_client))
        tenants = {"acme": tenant("acme", ns, "acme-api"), "ghost": tenant("ghost", ns, "none")}
        store = KubernetesTokenStore(lambda: tenants, reader, miss_refresh_interval_s=0)

        async def scenario() -> list[str | None]:
            out = [await store.authenticate(FIRST)]
            kube_cluster.apply(secret(ns, "acme-api", SECOND))
            out.append(await store.authenticate(SECOND))  # refresh on miss
            out.append(await store.authenticate(FIRST))
            return out

        assert asyncio.run(scenario()) == ["acme", "acme", None]
        assert "not found" in store.problems["ghost"]
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")
