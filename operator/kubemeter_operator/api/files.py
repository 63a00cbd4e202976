"""Load PricePlan and Tenant objects (YAML or JSON) and usage files, naming bad fields.

Every failure (unreadable file, bad YAML/JSON, a value the CRD schema would reject) raises
`InputError` with the offending field's path, e.g.
`spec.meters[1].pricing.tiers[0].upTo: ... (in plan.yaml)`. What the API server would refuse
is refused here too: a key given twice in one mapping (YAML: at any depth, with both lines;
JSON: any object), a top-level field other than apiVersion, kind, metadata, spec and status,
and an object of another kind than the command asks for. Integer literals of more than
`MAX_INT_DIGITS` digits are never converted (see `api.usage.bounded_int`): the field that
holds one refuses it by name. Reading a file never changes anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kubemeter_operator.api.errors import input_error, join_path
from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import (
    INPUT,
    MAX_INT_DIGITS,
    USAGE_LIST,
    OversizedInt,
    UsageRecord,
    bounded_int,
)
from kubemeter_operator.errors import InputError

M = TypeVar("M", bound=BaseModel)

OBJECT_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
"""The top-level fields of a PricePlan or Tenant object (the CRDs have no others)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives one key twice: `path` is the key's field path, lines are 1-based."""

    def __init__(self, path: str, key: Any, line: int, first_line: int) -> None:
        self.path = path
        self.key = key
        self.line = line
        self.first_line = first_line
        super().__init__(f"{path}: duplicate key {key!r} at line {line} (first at {first_line})")


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate mapping keys (at any depth, before anything
    is constructed) and leaves integers beyond `MAX_INT_DIGITS` digits unconverted.

    Keys merged in with `<<: *anchor` may be overridden, as YAML intends."""

    def construct_document(self, node: Node) -> Any:
        _check_duplicates(self, node, "", set())
        return super().construct_document(node)

    def construct_yaml_int(self, node: ScalarNode) -> Any:
        text = str(self.construct_scalar(node)).replace("_", "")
        if len(text.lstrip("+-")) > MAX_INT_DIGITS:
            return OversizedInt(len(text.lstrip("+-")))
        return super().construct_yaml_int(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def _check_duplicates(loader: StrictLoader, node: Node, path: str, seen: set[int]) -> None:
    """Walk the node graph (aliases visited once) and raise on a key given twice."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(loader, item, join_path(path, [i]), seen)
    elif isinstance(node, MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                _check_duplicates(loader, value_node, path, seen)
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            child = join_path(path, [str(key)])
            if key in first_line:
                raise DuplicateKeyError(child, key, line, first_line[key])
            first_line[key] = line
            _check_duplicates(loader, value_node, child, seen)


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(str(path), f"cannot read the file: {reason}") from None


class _DuplicateJsonKeyError(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"duplicate key {key!r}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKeyError(key)
        out[key] = value
    return out


def parse_json_text(text: str | bytes) -> Any:
    """`json.loads` with integers bounded (`bounded_int`) and duplicate object keys refused
    (`ValueError`); NaN and Infinity are not JSON and are refused too."""
    return json.loads(
        text,
        parse_int=bounded_int,
        parse_constant=_reject_constant,
        object_pairs_hook=_unique_object,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_document(path: str | Path) -> Any:
    """Parse one YAML or JSON document (JSON for `.json` files, YAML otherwise)."""
    text = read_text(path)
    where = str(path)
    if where.endswith(".json"):
        try:
            return parse_json_text(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                where, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except _DuplicateJsonKeyError as exc:
            raise InputError(
                exc.key, f"duplicate key {exc.key!r} in a JSON object (in {where})"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise InputError(where, f"not valid JSON: {exc}") from None
    try:
        docs = [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]
    except DuplicateKeyError as exc:
        raise InputError(
            exc.path,
            f"duplicate key {exc.key!r} at line {exc.line}, first given at line "
            f"{exc.first_line} (in {where})",
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(where, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(where, "not valid YAML: nested too deeply") from None
    if len(docs) != 1:
        raise InputError(where, f"expected exactly one YAML document, found {len(docs)}")
    return docs[0]


def _load_object(path: str | Path, model: type[M], kind: str) -> M:
    data = load_document(path)
    where = str(path)
    if not isinstance(data, dict):
        raise InputError(where, f"expected a {kind} object (apiVersion, kind, spec)")
    for required in ("apiVersion", "kind"):
        if required not in data:
            raise InputError(
                required, f"required: a {kind} object names its {required} (in {where})"
            )
    if data["kind"] != kind:
        raise InputError("kind", f"Input should be {kind!r}, not {data['kind']!r} (in {where})")
    unknown = sorted(str(k) for k in data if k not in OBJECT_FIELDS)
    if unknown:
        raise InputError(
            unknown[0],
            f"unknown field: a {kind} object has only {', '.join(OBJECT_FIELDS)} (in {where})",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise input_error(exc, "", data, where=where) from None


def load_priceplan(path: str | Path) -> PricePlan:
    """A PricePlan object (apiVersion kubemeter.dev/v1alpha1, kind PricePlan)."""
    return _load_object(path, PricePlan, "PricePlan")


def load_tenant(path: str | Path) -> Tenant:
    """A Tenant object (apiVersion kubemeter.dev/v1alpha1, kind Tenant)."""
    return _load_object(path, Tenant, "Tenant")


def parse_usage(data: Any, *, prefix: str = "usage", where: str = "") -> list[UsageRecord]:
    """Validate a list of usage records (already parsed from JSON) as input from outside."""
    if not isinstance(data, list):
        raise InputError(
            prefix, "expected a JSON list of usage records" + (f" (in {where})" if where else "")
        )
    try:
        return USAGE_LIST.validate_python(data, context=INPUT)
    except ValidationError as exc:
        raise input_error(exc, prefix, data, where=where) from None


def load_usage(path: str | Path) -> list[UsageRecord]:
    """A JSON (or YAML) list of usage records in the `api.usage` shape."""
    return parse_usage(load_document(path), where=str(path))
