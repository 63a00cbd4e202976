"""Generate the CustomResourceDefinitions in `crds/` from the pydantic models.

The models in `kubemeter_operator.api` are the single source of truth; this module turns
their JSON schema into a *structural* OpenAPI v3 schema as the API server requires it:
references inlined, `Optional` unwrapped, no `title`/`additionalProperties: false`, list
uniqueness as `x-kubernetes-list-type`, and the CEL rules declared on the models kept.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubemeter_operator.api.priceplan import GROUP, VERSION, PricePlanSpec, PricePlanStatus
from kubemeter_operator.api.tenant import TenantSpec, TenantStatus
from kubemeter_operator.api.types import ApiModel

JsonSchema = dict[str, Any]

_KEEP_KEYS = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "additionalProperties",
    "default",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
}

_VERBATIM_KEYS = {"x-kubernetes-validations", "enum", "required", "x-kubernetes-list-map-keys"}


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class ResourceDefinition:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

PRICEPLAN = ResourceDefinition(
    kind="PricePlan",
    plural="priceplans",
    singular="priceplan",
    short_names=("pp", "plan"),
    spec_model=PricePlanSpec,
    status_model=PricePlanStatus,
    description="PricePlan says what each unit of GPU time, tokens, steps, requests or "
    "custom usage costs per billing period.",
    columns=(
        PrinterColumn("Currency", ".spec.currency"),
        PrinterColumn("Platform-Fee", ".spec.platformFee"),
        PrinterColumn("Meters", ".status.meterCount", "integer"),
        AGE,
    ),
)

TENANT = ResourceDefinition(
    kind="Tenant",
    plural="tenants",
    singular="tenant",
    short_names=("tn",),
    spec_model=TenantSpec,
    status_model=TenantStatus,
    description="Tenant owns namespaces whose GPU time and tokens are metered, priced "
    "against its PricePlan, and held to its budget.",
    columns=(
        PrinterColumn("Plan", ".spec.pricePlanRef.name"),
        PrinterColumn("GPU-Hours", ".status.summary.gpuHours"),
        PrinterColumn("Tokens", ".status.summary.tokens", "integer"),
        PrinterColumn("Spend", ".status.summary.spend"),
        PrinterColumn("Budget", ".status.summary.budgetUsed"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Period", ".status.period", priority=1),
        PrinterColumn("Last-Metered", ".status.lastMeteredTime", "date", priority=1),
        AGE,
    ),
)

RESOURCES = (PRICEPLAN, TENANT)


def _structural(node: Any, defs: dict[str, JsonSchema]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v != {"type": "null"}]
        if len(variants) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']!r} structurally")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            rest.pop("default")
        return _structural({**variants[0], **rest}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _structural({**node["allOf"][0], **rest}, defs)
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    out: JsonSchema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "uniqueItems":
            if value:
                out.setdefault("x-kubernetes-list-type", "set")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
        elif key == "default":
            if isinstance(value, str | int | bool) and not isinstance(value, float):
                out[key] = value
        elif key == "description":
            out[key] = " ".join(value.split())
        elif key in _VERBATIM_KEYS:
            out[key] = value
        elif key in _KEEP_KEYS:
            out[key] = _structural(value, defs)
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out:
        out["type"] = "object"
    return out


def _attribute_docstrings(cls: type[Any]) -> dict[str, str]:
    """`field: T` followed by a string literal, in the class body: {field: that string}."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef), cls
    out: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body.body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):  # fmt: skip
            out[stmt.target.id] = inspect.cleandoc(after.value.value)
    return out


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


_DOCUMENTED = False


def document_fields() -> None:
    """Give every API model's fields their attribute docstrings as descriptions (once per
    process). The models do not read them at import (`ApiModel`: that costs every CLI
    start ~0.1 s of source parsing); only the CRDs need them."""
    global _DOCUMENTED
    if _DOCUMENTED:
        return
    models = [m for m in _subclasses(ApiModel) if m.__module__.startswith("kubemeter_operator.")]
    for model in models:
        docs = _attribute_docstrings(model)
        for name, info in model.__pydantic_fields__.items():
            if info.description is None and name in docs:
                info.description = docs[name]
    for model in models:  # JSON schemas are generated from the fields: rebuild each once
        model.model_rebuild(force=True)
    _DOCUMENTED = True


def openapi_schema(model: type[BaseModel]) -> JsonSchema:
    """A structural OpenAPI v3 schema for a model, as CRDs require."""
    document_fields()
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: JsonSchema = _structural(raw, defs)
    return schema


def _drop_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_drop_defaults(v) for v in node]
    return node


def crd(resource: ResourceDefinition) -> dict[str, Any]:
    spec_schema = openapi_schema(resource.spec_model)
    # The operator writes status; defaults there would only hide missing writes.
    status_schema = _drop_defaults(openapi_schema(resource.status_model))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.name,
            "labels": {"app.kubernetes.io/part-of": "kubemeter"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["kubemeter"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_api() for c in resource.columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": resource.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


DEFAULT_DIRS = (Path("crds"), Path("charts/kubemeter/crds"))
"""Where `kubemeter crds` writes, relative to the repository root."""

HEADER = "# Generated by `kubemeter crds` from kubemeter_operator.api. Do not edit.\n"


def render(resource: ResourceDefinition) -> str:
    body = yaml.safe_dump(crd(resource), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def file_name(resource: ResourceDefinition) -> str:
    return f"{resource.name}.yaml"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in RESOURCES:
        path = directory / file_name(resource)
        path.write_text(render(resource), encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of files in `directory` that differ from what the generator writes."""
    out = []
    for resource in RESOURCES:
        path = directory / file_name(resource)
        if not path.exists() or path.read_text(encoding="utf-8") != render(resource):
            out.append(path.name)
    return out
