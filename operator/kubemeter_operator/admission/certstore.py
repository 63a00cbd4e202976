"""Keeping the webhook's certificate in its Secret, and its CA in the webhook configuration.

    bundle = ensure_certificate(secret_store, hosts, now)     # blocking: call off the loop
    sync_ca_bundle(webhook_configs, "kubemeter-admission", bundle.ca_pem)

`ensure_certificate`, run by every replica at start and then periodically:
1. read the Secret; absent: generate a CA and serving certificate and create it. A 409
   means another replica created it first: read and use theirs (all replicas serve one
   certificate, so the one caBundle trusts them all).
2. present: use it, unless `certs.renewal_reason` says it must be renewed (under 30 days
   left, hosts not covered, unreadable): then replace it with a renewed bundle at the
   resourceVersion it was read at. A 409 means another replica renewed it first: read theirs.
A crash between generating and writing loses only the unwritten bundle; the Secret is the
one source of truth and every step above starts again from reading it.

`sync_ca_bundle` sets `clientConfig.caBundle` of every webhook in the named
ValidatingWebhookConfiguration to the CA bundle where it differs (one patch). A missing
configuration is not an error: the caller logs it and retries later (the chart may be
installing it right now).

Never write a Secret or configuration other than the two named, and never log key material.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kubemeter_operator.admission import certs
from kubemeter_operator.admission.certs import CertBundle
from kubemeter_operator.errors import ConflictError, InputError, TransientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredSecret:
    data: Mapping[str, str]
    """base64 values, as the API returns them."""
    resource_version: str


class SecretStore(Protocol):
    """The one Secret holding the certificate (blocking calls)."""

    where: str

    def read(self) -> StoredSecret | None:
        """None when it does not exist."""

    def create(self, data: Mapping[str, str]) -> None:
        """ConflictError when it exists already."""

    def replace(self, data: Mapping[str, str], resource_version: str) -> None:
        """ConflictError when it changed since `resource_version`."""


class WebhookConfigs(Protocol):
    """ValidatingWebhookConfigurations, by name (blocking calls)."""

    def ca_bundles(self, name: str) -> dict[str, str] | None:
        """webhook name -> its caBundle (base64, "" when unset); None when the
        configuration does not exist."""

    def set_ca_bundles(self, name: str, bundles: Mapping[str, str]) -> None:
        """Set `clientConfig.caBundle` of these webhooks."""


def _parse(stored: StoredSecret, where: str) -> CertBundle | None:
    if not stored.data:  # the chart creates it empty: issue the first certificate
        log.info("admission certificate secret %s is empty: issuing a certificate", where)
        return None
    try:
        return certs.from_secret_data(stored.data)
    except InputError as exc:
        log.warning("admission certificate secret %s is unusable (%s): replacing it", where, exc)
        return None


def ensure_certificate(store: SecretStore, hosts: Iterable[str], now: datetime) -> CertBundle:
    """The certificate every replica serves (see the module docstring)."""
    hosts = list(hosts)
    stored = store.read()
    if stored is None:
        bundle = certs.generate(hosts, now)
        try:
            store.create(certs.to_secret_data(bundle))
        except ConflictError:
            stored = store.read()
            if stored is None:
                raise TransientError(
                    f"secret {store.where}: created by another replica, then gone"
                ) from None
        else:
            log.info("admission certificate created in secret %s", store.where)
            return bundle
    current = _parse(stored, store.where)
    reason = "unusable" if current is None else certs.renewal_reason(current, hosts, now)
    if current is not None and reason is None:
        return current
    renewed = certs.generate(hosts, now) if current is None else certs.renew(current, hosts, now)
    try:
        store.replace(certs.to_secret_data(renewed), stored.resource_version)
    except ConflictError:
        again = store.read()
        theirs = _parse(again, store.where) if again is not None else None
        if theirs is None:
            raise TransientError(
                f"secret {store.where}: changed by another replica while renewing"
            ) from None
        log.info("admission certificate in %s was renewed by another replica", store.where)
        return theirs
    log.info("admission certificate in secret %s renewed: %s", store.where, reason)
    return renewed


def sync_ca_bundle(configs: WebhookConfigs, name: str, ca_pem: bytes) -> bool | None:
    """Patch the caBundle of every webhook of `name` that differs. True: patched; False:
    already current; None: the configuration does not exist (retry later)."""
    wanted = base64.b64encode(ca_pem).decode("ascii")
    current = configs.ca_bundles(name)
    if current is None:
        return None
    stale = {webhook: wanted for webhook, bundle in current.items() if bundle != wanted}
    if not stale:
        return False
    configs.set_ca_bundles(name, stale)
    log.info("caBundle of validatingwebhookconfiguration %s set (%s)", name, ", ".join(stale))
    return True
