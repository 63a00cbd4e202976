"""The API models: valid objects parse, each invalid case is refused naming its field, and
the checked-in CRDs are exactly what the generator writes."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from kubemeter_operator import crdgen
from kubemeter_operator.api.priceplan import PricePlan
from kubemeter_operator.api.tenant import Tenant

from support.invalid_objects import INVALID_CASES, InvalidCase, valid_priceplan, valid_tenant
from support.paths import REPO_ROOT


@pytest.mark.parametrize("directory", crdgen.DEFAULT_DIRS, ids=str)
def test_checked_in_crds_match_the_generator(directory: Path) -> None:
    assert crdgen.stale(REPO_ROOT / directory) == [], (
        f"{directory} drifted from the models: run `kubemeter crds`"
    )


def test_stale_detects_a_hand_edit(tmp_path: Path) -> None:
    out = tmp_path
    crdgen.write_all(out)
    assert crdgen.stale(out) == []
    victim = out / crdgen.file_name(crdgen.TENANT)
    victim.write_text(victim.read_text().replace("maximum: 100", "maximum: 1000"))
    assert crdgen.stale(out) == [victim.name]


def test_valid_objects_parse_with_exact_decimals() -> None:
    plan = PricePlan.model_validate(valid_priceplan())
    assert plan.spec.platform_fee == Decimal("100.00")
    tiers = plan.spec.meters[0].pricing.tiers
    assert tiers is not None
    assert tiers[1].flat_fee == Decimal(10)
    tenant = Tenant.model_validate(valid_tenant())
    assert tenant.spec.discount_percent == Decimal(5)
    # the wire form keeps decimals as strings
    assert plan.spec.to_api()["platformFee"] == "100.00"


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_models_reject_invalid_objects_naming_the_field(case: InvalidCase) -> None:
    model = PricePlan if case.kind == "PricePlan" else Tenant
    with pytest.raises(ValidationError) as info:
        model.model_validate(case.build("bad"))
    assert case.model_field in str(info.value)


def test_at_least_a_dozen_distinct_invalid_cases() -> None:
    assert len({c.id for c in INVALID_CASES}) >= 12


def test_crd_schema_is_structural() -> None:
    """No constructs the API server refuses in structural schemas."""

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for bad in ("$ref", "anyOf", "allOf", "oneOf", "title", "const", "uniqueItems"):
                assert bad not in node, f"{bad} left in schema"
            if "properties" in node:
                assert node.get("type") == "object"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for resource in crdgen.RESOURCES:
        walk(crdgen.crd(resource)["spec"]["versions"][0]["schema"])


def test_stdlib_operator_is_not_shadowed() -> None:
    """`operator/` at the repo root must never hide the standard library module."""
    out = subprocess.run(
        [sys.executable, "-c", "import operator, sys; print(operator.__file__)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" not in out
    assert not out.startswith(str(REPO_ROOT / "operator"))
    assert out.endswith("operator.py")
