"""Valid base objects and a catalogue of invalid variants.

Each invalid case must be rejected by the API server (through the generated CRD schema) and
by the pydantic models, with a message that names the offending field. The unit tests check
the models; the integration tests check a real kube-apiserver.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


def valid_priceplan(name: str = "valid-plan") -> Obj:
    return {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "PricePlan",
        "metadata": {"name": name},
        "spec": {
            "currency": "USD",
            "platformFee": "100.00",
            "meters": [
                {
                    "name": "gpu-h100",
                    "kind": "gpuTime",
                    "unit": "gpu-hour",
                    "gpuModel": "NVIDIA H100 80GB HBM3",
                    "included": "10",
                    "pricing": {
                        "model": "graduated",
                        "tiers": [
                            {"upTo": "100", "unitPrice": "2.50"},
                            {"upTo": "1000", "unitPrice": "2.00", "flatFee": "10"},
                            {"unitPrice": "1.50"},
                        ],
                    },
                },
                {
                    "name": "prompt",
                    "kind": "promptTokens",
                    "unit": "1m-tokens",
                    "pricing": {"model": "flat", "unitPrice": "0.15"},
                },
                {
                    "name": "steps",
                    "kind": "agentSteps",
                    "unit": "step",
                    "pricing": {"model": "package", "packageSize": "1000", "packagePrice": "1"},
                },
            ],
        },
    }


def valid_tenant(name: str = "valid-tenant") -> Obj:
    return {
        "apiVersion": "kubemeter.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Valid Co",
            "pricePlanRef": {"name": "valid-plan"},
            "namespaces": ["valid-prod"],
            "discountPercent": "5",
            "budget": {"limit": "1000", "alertThresholds": [50, 80, 100]},
        },
    }


@dataclass(frozen=True)
class InvalidCase:
    id: str
    kind: str  # "PricePlan" or "Tenant"
    mutate: Callable[[Obj], None]
    field: str
    """The field path the API server's message names (e.g. spec.meters[0].unit)."""
    model_field: str
    """What the pydantic error names (camelCase, dotted path or a fragment of it)."""

    def build(self, name: str) -> Obj:
        base = valid_priceplan(name) if self.kind == "PricePlan" else valid_tenant(name)
        obj = copy.deepcopy(base)
        self.mutate(obj)
        return obj


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        node: Any = obj
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


_DELETE = object()


def _dup_meter_name(obj: Obj) -> None:
    obj["spec"]["meters"].append(copy.deepcopy(obj["spec"]["meters"][1]))


def _dup_selector(obj: Obj) -> None:
    meter = copy.deepcopy(obj["spec"]["meters"][1])
    meter["name"] = "prompt-again"
    obj["spec"]["meters"].append(meter)


TIERS = "spec.meters.0.pricing.tiers"

INVALID_CASES: list[InvalidCase] = [
    InvalidCase("unknown-currency", "PricePlan", _set("spec.currency", "XXX"),
                "spec.currency", "currency"),
    InvalidCase("negative-fee", "PricePlan", _set("spec.platformFee", "-5"),
                "spec.platformFee", "platformFee"),
    InvalidCase("float-fee", "PricePlan", _set("spec.platformFee", 12.5),
                "spec.platformFee", "platformFee"),
    InvalidCase("unknown-meter-kind", "PricePlan", _set("spec.meters.1.kind", "gpuTme"),
                "spec.meters[1].kind", "meters.1"),
    InvalidCase("unit-for-wrong-kind", "PricePlan", _set("spec.meters.1.unit", "gpu-hour"),
                "spec.meters[1].unit", "unit"),
    InvalidCase("tiers-not-increasing", "PricePlan", _set(f"{TIERS}.1.upTo", "50"),
                "spec.meters[0].pricing.tiers", "tiers"),
    InvalidCase("middle-tier-unbounded", "PricePlan", _set(f"{TIERS}.1.upTo", _DELETE),
                "spec.meters[0].pricing.tiers", "tiers"),
    InvalidCase("package-size-zero", "PricePlan",
                _set("spec.meters.2.pricing.packageSize", "0"),
                "spec.meters[2].pricing.packageSize", "packageSize"),
    InvalidCase("flat-without-price", "PricePlan",
                _set("spec.meters.1.pricing.unitPrice", _DELETE),
                "spec.meters[1].pricing.unitPrice", "unitPrice"),
    InvalidCase("duplicate-meter-name", "PricePlan", _dup_meter_name,
                "spec.meters[3]", "name"),
    InvalidCase("meters-bill-twice", "PricePlan", _dup_selector,
                "spec.meters", "billed twice"),
    InvalidCase("gpu-model-on-token-meter", "PricePlan",
                _set("spec.meters.1.gpuModel", "NVIDIA H100 80GB HBM3"),
                "spec.meters[1].kind", "gpuModel"),
    InvalidCase("missing-pricing", "PricePlan", _set("spec.meters.1.pricing", _DELETE),
                "spec.meters[1].pricing", "pricing"),
    InvalidCase("threshold-above-100", "Tenant",
                _set("spec.budget.alertThresholds", [50, 150]),
                "spec.budget.alertThresholds[1]", "alertThresholds"),
    InvalidCase("discount-above-100", "Tenant", _set("spec.discountPercent", "120"),
                "spec.discountPercent", "discountPercent"),
    InvalidCase("unknown-enforcement", "Tenant", _set("spec.budget.enforcement", "kill"),
                "spec.budget.enforcement", "enforcement"),
    InvalidCase("no-namespaces", "Tenant", _set("spec.namespaces", []),
                "spec.namespaces", "namespaces"),
    InvalidCase("bad-namespace-name", "Tenant", _set("spec.namespaces", ["Bad_NS"]),
                "spec.namespaces[0]", "namespaces"),
    InvalidCase("missing-plan-ref", "Tenant", _set("spec.pricePlanRef", _DELETE),
                "spec.pricePlanRef", "pricePlanRef"),
    InvalidCase("zero-budget", "Tenant", _set("spec.budget.limit", "0"),
                "spec.budget.limit", "limit"),
    InvalidCase("webhook-not-http", "Tenant",
                _set("spec.notification", {"webhookUrl": "ftp://example.com/hook"}),
                "spec.notification.webhookUrl", "webhookUrl"),
]  # fmt: skip
