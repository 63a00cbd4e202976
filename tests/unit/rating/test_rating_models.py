"""Model validation: bad PricePlan, Tenant and usage input names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubemeter_operator.api.errors import format_validation_error, input_error, join_path
from kubemeter_operator.api.priceplan import PricePlan, PricePlanSpec
from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import USAGE_LIST


def meter(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "m",
        "kind": "gpuTime",
        "unit": "gpu-hour",
        "pricing": {"model": "flat", "unitPrice": "1"},
    }
    return {**base, **over}


def plan_error(*meters: dict[str, Any], **spec: Any) -> str:
    data = {"spec": {"currency": "USD", "meters": list(meters), **spec}}
    with pytest.raises(ValidationError) as info:
        PricePlan.model_validate(data)
    return format_validation_error(info.value, "", data)


@pytest.mark.parametrize(
    ("meters", "spec", "expected"),
    [
        ([meter(pricing={"model": "flat", "unitPrice": 1.5})], {},
         "spec.meters[0].pricing.unitPrice: must be a decimal string such as \"1.5\", not a float"),
        ([meter(), meter(name="n", kind="gpuTme")], {}, "spec.meters[1].kind: Input should be"),
        ([meter(unit="token")], {}, "spec.meters[0].unit: 'token' does not fit kind 'gpuTime'"),
        ([meter(pricing={"model": "graduated", "tiers": [
            {"upTo": "5", "unitPrice": "1"}, {"upTo": "5", "unitPrice": "1"},
            {"unitPrice": "1"}]})], {},
         "spec.meters[0].pricing.tiers[1].upTo: bounds must be strictly increasing"),
        ([meter(pricing={"model": "graduated", "tiers": [{"upTo": "-1", "unitPrice": "1"},
                                                         {"unitPrice": "1"}]})], {},
         "spec.meters[0].pricing.tiers[0].upTo: '-1' is not a non-negative decimal"),
        ([meter(pricing={"model": "volume", "tiers": [{"upTo": "5", "unitPrice": "1"}]})], {},
         "spec.meters[0].pricing.tiers: the last tier must be unbounded"),
        ([meter(pricing={"model": "package", "packageSize": "0", "packagePrice": "1"})], {},
         "spec.meters[0].pricing.packageSize: must be greater than 0"),
        ([meter(pricing={"model": "flat"})], {},
         "spec.meters[0].pricing.unitPrice: flat pricing needs unitPrice"),
        ([meter(included="1e3")], {}, "spec.meters[0].included: '1e3' is not a non-negative"),
        ([meter(kind="promptTokens", unit="token", gpuModel="x")], {},
         "spec.meters[0].gpuModel: only allowed on gpuTime meters"),
        ([meter(), meter()], {}, "spec.meters[1].name: duplicate meter name"),
        ([meter(), meter(name="other")], {}, "spec.meters[1]: selects the same usage"),
        ([meter(migProfile="big")], {}, "spec.meters[0].migProfile: String should match"),
        ([], {"currency": "XXX"}, "spec.currency: 'XXX' is not a supported ISO 4217 code"),
        ([], {"platformFee": "ten"}, "spec.platformFee: 'ten' is not a non-negative decimal"),
        ([], {"colour": "red"}, "spec.colour: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_priceplan_errors_name_the_field(
    meters: list[dict[str, Any]], spec: dict[str, Any], expected: str
) -> None:
    assert expected in plan_error(*meters, **spec)


def test_a_valid_plan_round_trips_through_the_api_form() -> None:
    spec = PricePlanSpec.model_validate(
        {"currency": "JPY", "platformFee": "5000", "meters": [meter(included="0.5")]}
    )
    assert spec.to_api()["meters"][0]["included"] == "0.5"
    assert PricePlanSpec.model_validate(spec.to_api()) == spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"discountPercent": "120"}, "spec.discountPercent: 120 is above 100 percent"),
        ({"discountPercent": 10.5}, "spec.discountPercent: must be a decimal string"),
        ({"budget": {"limit": "0"}}, "spec.budget.limit: must be greater than 0"),
        ({"budget": {"limit": "5", "alertThresholds": [50, 150]}},
         "spec.budget.alertThresholds[1]: 150 is not within 1..100"),
        ({"budget": {"limit": "5", "enforcement": "kill"}}, "spec.budget.enforcement: Input"),
        ({"namespaces": ["a", "a"]}, "spec.namespaces[1]: duplicate namespace 'a'"),
        ({"namespaces": ["Bad_NS"]}, "spec.namespaces[0]: 'Bad_NS' is not a valid namespace"),
        ({"pricePlanRef": {}}, "spec.pricePlanRef.name: Field required"),
    ],
)  # fmt: skip
def test_tenant_errors_name_the_field(spec: dict[str, Any], expected: str) -> None:
    data = {"spec": {"pricePlanRef": {"name": "p"}, "namespaces": ["a"], **spec}}
    with pytest.raises(ValidationError) as info:
        Tenant.model_validate(data)
    assert expected in format_validation_error(info.value, "", data)


GOOD_GPU = {
    "kind": "gpu",
    "model": "NVIDIA H100 80GB HBM3",
    "allocatedMs": 10,
    "windowStart": "2026-11-01T00:00:00Z",
    "windowEnd": "2026-11-01T00:00:01Z",
}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({**GOOD_GPU, "allocatedMs": -1}, "usage[0].allocatedMs: Input should be greater than"),
        ({**GOOD_GPU, "allocatedMs": 1.5}, "usage[0].allocatedMs: Input should be a valid integer"),
        ({**GOOD_GPU, "activeMs": 11}, "usage[0].activeMs: cannot exceed allocatedMs"),
        ({**GOOD_GPU, "windowEnd": "2026-11-01T00:00:00Z"},
         "usage[0].windowEnd: must be after windowStart"),
        ({**GOOD_GPU, "windowStart": "2026-11-01T00:00:00"}, "usage[0].windowStart: Input should"),
        ({"kind": "tokens", "model": "m", "promptTokens": 1, "cachedPromptTokens": 2,
          "timestamp": "2026-11-01T00:00:00Z"},
         "usage[0].cachedPromptTokens: cannot exceed promptTokens"),
        ({"kind": "custom", "name": "c", "quantity": 0.1, "timestamp": "2026-11-01T00:00:00Z"},
         "usage[0].quantity: must be a decimal string such as \"0.1\", not a float"),
        ({"kind": "gpus"}, "usage[0].kind: Input tag 'gpus' found using 'kind' does not match"),
        ({"steps": 1}, "usage[0].kind: Unable to extract tag"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_field(record: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        USAGE_LIST.validate_python([record])
    assert expected in format_validation_error(info.value, "usage", [record])


def test_input_error_names_the_first_field_and_lists_the_rest() -> None:
    data = [{**GOOD_GPU, "allocatedMs": -1}, {**GOOD_GPU, "model": ""}]
    with pytest.raises(ValidationError) as info:
        USAGE_LIST.validate_python(data)
    err = input_error(info.value, "usage", data, where="u.json")
    assert err.field == "usage[0].allocatedMs"
    assert "(in u.json)" in err.problem
    assert "usage[1].model:" in str(err)


def test_join_path() -> None:
    assert join_path("spec", ["meters", 1, "pricing", "tiers", 0, "upTo"]) == (
        "spec.meters[1].pricing.tiers[0].upTo"
    )
    assert join_path("", [0, "kind"]) == "[0].kind"
