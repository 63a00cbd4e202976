"""What the cluster commands (`top`, `why`) read: Tenants, through the user's kubeconfig.

- `add_cluster_flags`: `--kubeconfig` and `--context`, as kubectl has them. Without them
  the kubeconfig is $KUBECONFIG (a `:`-separated list, merged), else ~/.kube/config, at its
  current context; in a pod without a kubeconfig, the service account.
- `list_tenants`: the Tenant objects as the API server returns them (plain dicts, read
  with the accessors below): a newer operator may write status fields this CLI does not
  know, and reading must not fail on them.

The kubernetes client is imported inside the functions that talk to the cluster, never at
module level: `kubemeter --help` and `kubemeter top --help` must not pay for it. Reads only;
never writes to the cluster or the kubeconfig.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from kubemeter_operator.errors import PermanentError


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG or "
        "~/.kube/config)",
    )  # fmt: skip
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def api_client(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient for the kubeconfig's context (see the module docstring)."""
    from kubernetes import config

    from kubemeter_operator.kube.client import load_api_client

    try:
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, persist_config=False
        )
    except (config.ConfigException, OSError) as exc:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return load_api_client(None)  # in a pod: its service account
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise PermanentError(f"cannot load the kubeconfig {where}: {exc}") from exc


def list_tenants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every Tenant in the cluster of `args.kubeconfig`/`args.context`, by name."""
    from kubemeter_operator.kube import client as kube

    api = api_client(args.kubeconfig, args.context)
    try:
        tenants = kube.list_tenants(api)
    finally:
        api.close()
    return sorted(tenants, key=name)


def name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def field(obj: Mapping[str, Any], *path: str) -> Any:
    """`obj[path[0]][path[1]]...`, None where a step is missing or not a mapping."""
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def dec(value: Any) -> Decimal | None:
    """A decimal string (or integer) of the API as a Decimal; None if absent or not one."""
    if value is None or isinstance(value, bool | float):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def when(value: Any) -> datetime | None:
    """An RFC 3339 instant of the API; None if absent or not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def items(value: Any) -> list[dict[str, Any]]:
    """The mappings of a list field (an absent list is empty)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
