"""The oracle: quote the examples and check figures computed by hand.

examples/usage.json for 2026-11 (the default period: the latest record is 2026-11-28):

H100 meter `h100-gpu-hours` (allocated basis, gpu-hour, 1 included, graduated):
  gpu-h100-straddle  2026-10-31T22:00 .. 2026-11-01T04:00, 6 h wall, 43,200,000 ms (2 GPUs)
                     November part: 4 h of 6 h -> 43,200,000 - 14,400,000 = 28,800,000 ms
  gpu-h100-week      432,000,000 ms (120 h)
  3g.40gb slices     no 3g.40gb meter -> 3/7 of the period sum:
                     (25,200,000 + 1,000) x 3/7 = 75,603,000 / 7 = 10,800,428.57 -> 10,800,429
  sum                28,800,000 + 432,000,000 + 10,800,429 = 471,600,429 ms
                     = 131 h + 429 ms = 131.000119166... h; billable 130.000119166... h
  tier 0             100 x 4.50                                   = 450.00
  tier 1             30.000119166... x 3.90 = 117 + 429 x 3.90 / 3,600,000
                                            = 117.00046475, + flat fee 25.00
  amount             592.00046475 -> 592.00
  cost               131.000119166... x 2.10 = 275.1 + 0.00025025 -> 275.10
`h100-mig-1g10gb`    36,000,000 + 18,000,000 ms = 15 h x 0.75 = 11.25; cost 15 x 0.30 = 4.50
`a100-active-hours`  active basis: 54,000,000 + 2g.20gb share 14,000,000 x 2/7 = 4,000,000
                     = 58,000,000 ms = 16.111... h x 2.40 = 38.666... -> 38.67
                     cost 16.111... x 1.20 = 19.333... -> 19.33
Llama tokens (Nov only; the October record is out of the period):
  prompt 2,400,000 + 1,350,000 = 3,750,000; cached 600,000 + 150,000 = 750,000
  `llama-8b-prompt`  (3,750,000 - 750,000) = 3 M, 1 included -> 2 x 0.20 = 0.40
  `llama-8b-cached`  0.75 M x 0.05 = 0.0375 -> 0.04
  `llama-8b-completion` 700,000 + 450,000 = 1.15 M, 0.5 included -> 0.65 x 0.60 = 0.39
                     cost 1.15 x 0.15 = 0.1725 -> 0.17
`agent-steps`        1,800 + 650 = 2,450, 1,000 included -> 1,450 -> ceil(1450/500) = 3
                     packages x 2.50 = 7.50
`requests`           120,000 + 30,500 = 150.5 k (October's 4,500 excluded) -> volume tier 1
                     (100 < 150.5 <= 1000): 150.5 x 0.08 = 12.04 + flat 5.00 = 17.04
platform fee         99.00
subtotal             99.00 + 592.00 + 11.25 + 38.67 + 0.40 + 0.04 + 0.39 + 7.50 + 17.04 = 766.29
discount (acme 10 %) 76.629 -> 76.63;  total 766.29 - 76.63 = 689.66
cost                 275.10 + 4.50 + 19.33 + 0.17 = 299.10;  margin 689.66 - 299.10 = 390.56
unpriced             NVIDIA L4 (3,600,000 / 1,800,000 ms); Mistral prompt 100,000 and
                     completion 20,000 tokens (no meter for that model)

JPY plan (tokens of any model, per 1k, volume):
  prompt      Llama 3,000,000 + Mistral 100,000 = 3,100 k -> tier 1: 3100 x 0.12 = 372
  cached      750 k x 0.03 = 22.5 -> 23 (half-up)
  completion  1,150,000 + 20,000 = 1,170 k -> tier 1: 1170 x 0.50 = 585
  subtotal    5000 + 372 + 23 + 585 = 5980; globex 2.5 % = 149.5 -> 150; total 5830
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from kubemeter_operator.api.files import load_priceplan, load_tenant, load_usage
from kubemeter_operator.cli import main
from kubemeter_operator.rating import rate
from kubemeter_operator.status.builder import meter_usages
from kubemeter_operator.usage import Period, accumulate

D = Decimal
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
GPU_PLAN = str(EXAMPLES / "priceplan-gpu-standard.yaml")
JPY_PLAN = str(EXAMPLES / "priceplan-tokens-jpy.yaml")
ACME = str(EXAMPLES / "tenant-acme.yaml")
GLOBEX = str(EXAMPLES / "tenant-globex.yaml")
USAGE = str(EXAMPLES / "usage.json")


def quote_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["quote", *args]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_examples_are_valid_cluster_scoped_objects() -> None:
    for path, kind in ((GPU_PLAN, "PricePlan"), (JPY_PLAN, "PricePlan")):
        plan = load_priceplan(path)
        assert (plan.api_version, plan.kind) == ("kubemeter.dev/v1alpha1", kind)
        assert "namespace" not in plan.metadata
    acme, globex = load_tenant(ACME), load_tenant(GLOBEX)
    assert acme.spec.price_plan_ref.name == load_priceplan(GPU_PLAN).name == "gpu-standard"
    assert globex.spec.price_plan_ref.name == load_priceplan(JPY_PLAN).name == "tokens-jpy"
    assert acme.spec.budget is not None
    assert acme.spec.budget.limit == D(5000)
    assert acme.spec.budget.alert_thresholds == [50, 80, 100]
    assert acme.spec.budget.enforcement == "scaleDown"
    assert acme.spec.wallet is not None
    assert not acme.spec.wallet.enabled
    assert globex.spec.wallet is not None
    assert globex.spec.wallet.enabled
    assert "namespace" not in acme.metadata
    assert "namespace" not in globex.metadata


def test_gpu_standard_quote_for_acme(capsys: pytest.CaptureFixture[str]) -> None:
    s = quote_json(capsys, "--plan", GPU_PLAN, "--usage", USAGE, "--tenant", ACME)
    assert s["period"] == "2026-11"
    assert s["currency"] == "USD"
    lines = {line["meter"]: line for line in s["lines"]}  # type: ignore[attr-defined]
    h100 = lines["h100-gpu-hours"]
    assert h100["quantity"] == "471600429"
    assert h100["billedQuantity"].startswith("131.00011916666")
    assert h100["amountExact"] == "592.00046475"
    assert [(t["tier"], t["flatFee"]) for t in h100["tiers"]] == [(0, "0"), (1, "25.00")]
    assert [t["amount"] for t in h100["tiers"]] == ["450", "117.00046475"]
    expected = {
        "h100-gpu-hours": ("592.00", "275.10"),
        "h100-mig-1g10gb": ("11.25", "4.50"),
        "a100-active-hours": ("38.67", "19.33"),
        "llama-8b-prompt": ("0.40", None),
        "llama-8b-cached": ("0.04", None),
        "llama-8b-completion": ("0.39", "0.17"),
        "agent-steps": ("7.50", None),
        "requests": ("17.04", None),
    }
    assert {k: (v["amount"], v.get("cost")) for k, v in lines.items()} == expected
    assert lines["a100-active-hours"]["quantity"] == "58000000"
    assert lines["llama-8b-prompt"]["quantity"] == "3000000"
    assert lines["llama-8b-cached"]["quantity"] == "750000"
    assert lines["agent-steps"]["packages"] == 3
    assert lines["requests"]["tiers"][0]["tier"] == 1
    assert (s["platformFee"], s["subtotal"], s["discountPercent"], s["discount"]) == (
        "99.00", "766.29", "10", "76.63",
    )  # fmt: skip
    assert (s["total"], s["cost"], s["margin"]) == ("689.66", "299.10", "390.56")
    unpriced = [(u["kind"], u["model"], u["quantities"]) for u in s["unpriced"]]  # type: ignore[attr-defined]
    assert unpriced == [
        ("gpu", "NVIDIA L4", {"allocatedMs": "3600000", "activeMs": "1800000"}),
        ("tokens", "mistralai/Mistral-7B-Instruct-v0.3",
         {"promptTokens": "100000", "completionTokens": "20000"}),
    ]  # fmt: skip


def test_tokens_jpy_quote_for_globex(capsys: pytest.CaptureFixture[str]) -> None:
    s = quote_json(capsys, "--plan", JPY_PLAN, "--usage", USAGE, "--tenant", GLOBEX)
    lines = {line["meter"]: line["amount"] for line in s["lines"]}  # type: ignore[attr-defined]
    assert lines == {
        "prompt-tokens": "372",
        "cached-prompt-tokens": "23",
        "completion-tokens": "585",
    }
    assert (s["platformFee"], s["subtotal"], s["discount"], s["total"]) == (
        "5000", "5980", "150", "5830",
    )  # fmt: skip


def test_october_quote_takes_the_straddling_windows_first_part(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # October: 14,400,000 ms of H100 = 4 h, 1 included -> 3 x 4.50 = 13.50;
    # Llama prompt 900,000 - 100,000 cached = 0.8 M <= 1 included -> 0; cached 0.1 M x 0.05
    # = 0.005 -> 0.01; completion 0.3 M <= 0.5 included -> 0; requests 4.5 k x 0.10 = 0.45.
    # Subtotal 99 + 13.50 + 0.01 + 0.45 = 112.96 (no tenant: no discount).
    s = quote_json(capsys, "--plan", GPU_PLAN, "--usage", USAGE, "--period", "2026-10")
    lines = {line["meter"]: line["amount"] for line in s["lines"]}  # type: ignore[attr-defined]
    assert lines["h100-gpu-hours"] == "13.50"
    assert lines["llama-8b-cached"] == "0.01"
    assert lines["requests"] == "0.45"
    assert s["total"] == "112.96"


def test_library_api_agrees_with_the_cli() -> None:
    plan, records = load_priceplan(GPU_PLAN), load_usage(USAGE)
    period = Period(2026, 11)
    statement = rate(plan.spec, accumulate(records, period), period=period,
                     discount_percent=load_tenant(ACME).spec.discount_percent)  # fmt: skip
    assert statement.total == D("689.66")
    assert [m.charge for m in meter_usages(statement)][:3] == [
        D("592.00"), D("11.25"), D("38.67"),
    ]  # fmt: skip


def test_table_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quote", "--plan", GPU_PLAN, "--usage", USAGE, "--tenant", ACME,
                 "--format", "table"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Statement 2026-11 (USD)" in out
    assert "h100-gpu-hours" in out
    assert "689.66" in out
    assert "-76.63" in out
    assert "unpriced usage" in out
    assert "NVIDIA L4" in out
