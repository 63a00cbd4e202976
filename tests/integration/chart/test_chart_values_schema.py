"""values.schema.json covers every value of values.yaml, and refuses what it does not know:
every key path of values.yaml is a property of the schema, every object the schema types
is closed (additionalProperties false) unless it is a free map (labels, Kubernetes
objects), and the defaults validate."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from support.chart import CHART, helm, render

pytestmark = pytest.mark.integration

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _paths(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Key paths of `values` the schema does not declare."""
    missing: list[str] = []
    if not isinstance(values, dict) or "properties" not in schema:
        return missing
    assert schema.get("additionalProperties") is False, f"{path or '/'} is not closed"
    for key, value in values.items():
        sub = schema["properties"].get(key)
        if sub is None:
            missing.append(f"{path}/{key}")
        else:
            missing += _paths(value, sub, f"{path}/{key}")
    return missing


def test_every_value_is_in_the_schema() -> None:
    assert _paths(VALUES, SCHEMA) == []


def test_every_schema_property_is_a_value() -> None:
    def declared(schema: dict[str, Any], values: Any, path: str = "") -> list[str]:
        extra = []
        for key, sub in schema.get("properties", {}).items():
            if not isinstance(values, dict) or key not in values:
                extra.append(f"{path}/{key}")
            else:
                extra += declared(sub, values[key], f"{path}/{key}")
        return extra

    assert declared(SCHEMA, VALUES) == []


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("exporter.podMonitor.enabeld=true", "/exporter/podMonitor"),
        ("monitoring.dashbord.enabled=true", "/monitoring"),
        ("operator.lag=-1", "/operator/lag"),
        ("exporter.interval=5 seconds", "/exporter/interval"),
        ("operator.db=mysql://x", "/operator/db"),
    ],
)
def test_typos_and_bad_values_are_refused_naming_the_path(bad: str, named: str) -> None:
    with pytest.raises(AssertionError, match=named):
        render("km", "kubemeter", bad)


def test_helm_lint_is_clean_with_everything_on() -> None:
    helm("lint", str(CHART), "--strict", "--set",
         "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,"
         "monitoring.dashboard.enabled=true,exporter.podMonitor.enabled=true")  # fmt: skip
