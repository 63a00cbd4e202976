"""The events API: AI gateways and apps post token/step usage over HTTP.

    app = create_app(ledger, token_store, tenants_provider, config=EventsApiConfig(...))
    runner = await serve(app, port=8080, ssl_context=server_ssl_context(reader, "ns/name"))

Idempotent by event id, authenticated by a per-tenant bearer token (`TokenStore`; tokens
from Secrets must be strong, `token_weakness`), and a rejected batch writes nothing. Hostile
or broken clients are bounded: requests in flight, failed authentications per client,
header and body timeouts, header sizes (`limits`, `server`). See `app.py` for the routes and
status codes.

Nothing in this package may block the event loop it shares with kopf.
"""

from kubemeter_operator.events_api.app import EventsApiConfig, create_app
from kubemeter_operator.events_api.auth import (
    MIN_TOKEN_BYTES,
    StaticTokenStore,
    TokenIndex,
    TokenStore,
    bearer_token,
    token_digest,
    token_weakness,
)
from kubemeter_operator.events_api.k8s_tokens import (
    KubernetesTokenStore,
    SecretReader,
    kubernetes_secret_reader,
)
from kubemeter_operator.events_api.limits import FailureLimiter, InflightLimit, client_key
from kubemeter_operator.events_api.ports import EventLedger, RecordResultLike, TenantsProvider
from kubemeter_operator.events_api.server import bound_port, serve
from kubemeter_operator.events_api.tls import server_ssl_context

__all__ = [
    "MIN_TOKEN_BYTES",
    "EventLedger",
    "EventsApiConfig",
    "FailureLimiter",
    "InflightLimit",
    "KubernetesTokenStore",
    "RecordResultLike",
    "SecretReader",
    "StaticTokenStore",
    "TenantsProvider",
    "TokenIndex",
    "TokenStore",
    "bearer_token",
    "bound_port",
    "client_key",
    "create_app",
    "kubernetes_secret_reader",
    "serve",
    "server_ssl_context",
    "token_digest",
    "token_weakness",
]
