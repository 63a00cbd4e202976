"""Shared fixtures for the ledger tests (databases come from tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.ledger import Ledger

PLAN: dict[str, Any] = {
    "currency": "USD",
    "platformFee": "100.00",
    "meters": [
        {"name": "gpu", "kind": "gpuTime", "unit": "gpu-hour",
         "pricing": {"model": "flat", "unitPrice": "2.50"}},
        {"name": "prompt", "kind": "promptTokens", "unit": "1m-tokens", "included": "1",
         "pricing": {"model": "graduated", "tiers": [
             {"upTo": "10", "unitPrice": "3.00"}, {"unitPrice": "1.50"}]}},
        {"name": "completion", "kind": "completionTokens", "unit": "1k-tokens",
         "pricing": {"model": "flat", "unitPrice": "0.013"}},
        {"name": "credits", "kind": "custom", "customName": "credits", "unit": "unit",
         "pricing": {"model": "flat", "unitPrice": "0.10"}},
    ],
}  # fmt: skip


@pytest.fixture
def plan() -> PricePlanSpec:
    return PricePlanSpec.model_validate(PLAN)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger.open(ledger_url)
    try:
        yield led
    finally:
        led.close()
