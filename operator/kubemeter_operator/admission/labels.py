"""The tenant label on namespaces: what scopes the webhook to tenant namespaces.

The webhook configuration's namespaceSelector is `kubemeter.dev/tenant` Exists, so the API
server calls the webhook only for namespaces carrying it: an operator outage with
failurePolicy Fail then blocks nothing outside tenant namespaces. The leader keeps the label
`kubemeter.dev/tenant=<tenant>` on every namespace one Tenant owns (`ownership`: a
namespace two Tenants list carries none) and removes it from namespaces no Tenant owns any
more; standbys only watch. It runs every `interval_s` (namespaces that do not exist yet are
labelled once they appear).

A label value is at most 63 characters: a longer tenant name is shortened to its first 54
characters and 8 hex digits of its SHA-256 (the selector only asks that the label exists;
the value is for people).

Never touch other labels, other namespaces than those that carry or should carry the label,
or anything but namespaces.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from kubemeter_operator.admission.ownership import namespace_owners
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.errors import KubemeterError

log = logging.getLogger(__name__)

TENANT_LABEL = "kubemeter.dev/tenant"


class NamespaceStore(Protocol):
    def labels(self, key: str) -> dict[str, str | None]:
        """Every namespace -> its value of label `key` (None: not set)."""

    def set_label(self, namespace: str, key: str, value: str | None) -> bool:
        """Set (None: remove) the label; False when the namespace does not exist."""


def label_value(tenant: str) -> str:
    if len(tenant) <= 63:
        return tenant
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:8]
    return f"{tenant[:54].rstrip('-.')}-{digest}"


def desired_labels(tenants: Mapping[str, Tenant]) -> dict[str, str]:
    """namespace -> the label value it should carry."""
    return {ns: label_value(t.name) for ns, t in namespace_owners(tenants).items()}


def label_changes(
    current: Mapping[str, str | None], desired: Mapping[str, str]
) -> dict[str, str | None]:
    """namespace -> the value to set (None: remove), for existing namespaces that differ."""
    return {
        ns: desired.get(ns)
        for ns, value in current.items()
        if value != desired.get(ns) and (value is not None or ns in desired)
    }


class NamespaceLabeler:
    """Keeps the tenant label current while this replica leads."""

    def __init__(
        self,
        store: NamespaceStore,
        tenants: Callable[[], Mapping[str, Tenant]],
        leading: Callable[[], bool],
        *,
        interval_s: float = 15.0,
    ) -> None:
        self.store = store
        self.tenants = tenants
        self.leading = leading
        self.interval_s = interval_s

    def sync_once(self, tenants: Mapping[str, Tenant] | None = None) -> dict[str, str | None]:
        """Label and unlabel namespaces now (blocking) for `tenants` (default: the current
        ones); returns what changed."""
        desired = desired_labels(self.tenants() if tenants is None else tenants)
        changes = label_changes(self.store.labels(TENANT_LABEL), desired)
        done: dict[str, str | None] = {}
        for namespace, value in sorted(changes.items()):
            if self.store.set_label(namespace, TENANT_LABEL, value):
                done[namespace] = value
                if value is None:
                    log.info("namespace %s: label %s removed", namespace, TENANT_LABEL)
                else:
                    log.info("namespace %s: label %s=%s", namespace, TENANT_LABEL, value)
        return done

    async def run(self) -> None:
        """Sync every `interval_s` while leading, until cancelled; errors are logged."""
        while True:
            if self.leading():
                tenants = dict(self.tenants())  # on the loop: the watch mutates the mapping
                try:
                    await asyncio.to_thread(self.sync_once, tenants)
                except KubemeterError as exc:
                    log.warning("namespace tenant labels not synced (retrying): %s", exc)
            await asyncio.sleep(self.interval_s)
