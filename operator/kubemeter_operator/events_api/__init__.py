"""The events API: AI gateways and apps post token/step usage over HTTP.

    app = create_app(ledger, token_store, tenants_provider)
    runner = await serve(app, port=8080)

Idempotent by event id, authenticated by a per-tenant bearer token (`TokenStore`), and a
rejected batch writes nothing. See `app.py` for the routes and status codes.
"""

from kubemeter_operator.events_api.app import EventsApiConfig, create_app
from kubemeter_operator.events_api.auth import (
    StaticTokenStore,
    TokenIndex,
    TokenStore,
    bearer_token,
    token_digest,
)
from kubemeter_operator.events_api.k8s_tokens import (
    KubernetesTokenStore,
    SecretReader,
    kubernetes_secret_reader,
)
from kubemeter_operator.events_api.ports import EventLedger, RecordResultLike, TenantsProvider
from kubemeter_operator.events_api.server import bound_port, serve

__all__ = [
    "EventLedger",
    "EventsApiConfig",
    "KubernetesTokenStore",
    "RecordResultLike",
    "SecretReader",
    "StaticTokenStore",
    "TenantsProvider",
    "TokenIndex",
    "TokenStore",
    "bearer_token",
    "bound_port",
    "create_app",
    "kubernetes_secret_reader",
    "serve",
    "token_digest",
]
