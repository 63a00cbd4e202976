"""Reading Kubernetes Secrets: the one place the operator asks the API server for one.

    read = kubernetes_secret_reader(core_v1)      # (namespace, name) -> base64 `data` | None
    value = secret_value(read("ns", "name"), "token")   # decoded bytes, stripped | None

Used by the events API (tenant API tokens, its TLS certificate) and by notifications (the
webhook signing secret). A reader returns the Secret's `data` as Kubernetes returns it
(base64 values); None means the Secret does not exist; TransientError means the API server
could not be asked (down, or not allowed: RBAC that is fixed later must start working
without a restart).

Never log a Secret's value, and never keep one longer than the caller needs it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from kubemeter_operator.errors import TransientError

SecretReader = Callable[[str, str], "dict[str, str] | None"]
"""(namespace, name) -> the Secret's base64 `data`, None when it does not exist; raises
TransientError when the API server cannot be asked."""


def kubernetes_secret_reader(core_v1: Any = None) -> SecretReader:
    """A SecretReader on the official client (`CoreV1Api`; loads the config if not given)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if core_v1 is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        core_v1 = client.CoreV1Api()

    def read(namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = core_v1.read_namespaced_secret(name, namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (401, 403):
                raise TransientError(
                    f"not allowed to read secret {namespace}/{name}: {exc.reason}"
                ) from exc
            raise TransientError(f"reading secret {namespace}/{name}: {exc.reason}") from exc
        except Exception as exc:  # urllib3 / connection errors
            raise TransientError(f"reading secret {namespace}/{name}: {exc}") from exc
        return dict(secret.data or {})

    return read


def secret_value(data: Mapping[str, str] | None, key: str) -> bytes | None:
    """The value of `key` in a Secret's base64 `data`, decoded, with surrounding whitespace
    removed (`echo value | kubectl create secret ...` adds a newline). None when the Secret
    or the key is missing, the value is not base64, or it is empty."""
    if data is None:
        return None
    raw = data.get(key)
    if raw is None:
        return None
    try:
        value = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return value.strip() or None


__all__ = ["SecretReader", "kubernetes_secret_reader", "secret_value"]
