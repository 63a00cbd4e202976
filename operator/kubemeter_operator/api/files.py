"""Load PricePlan and Tenant objects (YAML or JSON) and usage files, naming bad fields.

Every failure (unreadable file, bad YAML/JSON, a value the CRD schema would reject) raises
`InputError` with the offending field's path, e.g.
`spec.meters[1].pricing.tiers[0].upTo: ... (in plan.yaml)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kubemeter_operator.api.errors import input_error
from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import USAGE_LIST, UsageRecord
from kubemeter_operator.errors import InputError

M = TypeVar("M", bound=BaseModel)


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(str(path), f"cannot read the file: {reason}") from None


def load_document(path: str | Path) -> Any:
    """Parse one YAML or JSON document (JSON for `.json` files, YAML otherwise)."""
    text = read_text(path)
    if str(path).endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                str(path), f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"not valid YAML: {exc}") from None
    if len(docs) != 1:
        raise InputError(str(path), f"expected exactly one YAML document, found {len(docs)}")
    return docs[0]


def _load_object(path: str | Path, model: type[M], kind: str) -> M:
    data = load_document(path)
    if not isinstance(data, dict):
        raise InputError(str(path), f"expected a {kind} object (apiVersion, kind, spec)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise input_error(exc, "", data, where=str(path)) from None


def load_priceplan(path: str | Path) -> PricePlan:
    """A PricePlan object (apiVersion kubemeter.dev/v1alpha1, kind PricePlan)."""
    return _load_object(path, PricePlan, "PricePlan")


def load_tenant(path: str | Path) -> Tenant:
    """A Tenant object (apiVersion kubemeter.dev/v1alpha1, kind Tenant)."""
    return _load_object(path, Tenant, "Tenant")


def parse_usage(data: Any, *, prefix: str = "usage", where: str = "") -> list[UsageRecord]:
    """Validate a list of usage records (already parsed from JSON)."""
    if not isinstance(data, list):
        raise InputError(
            prefix, "expected a JSON list of usage records" + (f" (in {where})" if where else "")
        )
    try:
        return USAGE_LIST.validate_python(data)
    except ValidationError as exc:
        raise input_error(exc, prefix, data, where=where) from None


def load_usage(path: str | Path) -> list[UsageRecord]:
    """A JSON (or YAML) list of usage records in the `api.usage` shape."""
    return parse_usage(load_document(path), where=str(path))
