"""kubemeter ledger / invoice / wallet / revenue commands against a real ledger."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.cli import main

USAGE = [
    {"kind": "gpu", "id": "g1", "model": "H100", "allocatedMs": 36_000_000,
     "windowStart": "2026-11-02T20:00:00Z", "windowEnd": "2026-11-03T06:00:00Z"},
    {"kind": "tokens", "id": "t1", "model": "llama", "promptTokens": 3_000_001,
     "completionTokens": 12_345, "timestamp": "2026-11-05T00:00:00Z"},
    {"kind": "tokens", "id": "t2", "model": "llama", "promptTokens": 7,
     "completionTokens": 3, "timestamp": "2026-11-09T00:00:00Z"},
]  # fmt: skip


def test_cli_flow(
    ledger_url: str, plan: PricePlanSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_spec = plan
    usage = tmp_path / "usage.json"
    usage.write_text(json.dumps(USAGE))
    plan = tmp_path / "plan.yaml"
    spec = plan_spec.to_api()
    plan.write_text(yaml.safe_dump({"apiVersion": "kubemeter.dev/v1alpha1", "kind": "PricePlan",
                                    "metadata": {"name": "std"}, "spec": spec}))  # fmt: skip
    db = ["--db", ledger_url]
    assert main(["ledger", "record", "--tenant", "acme", "--usage", str(usage), *db]) == 0
    assert main(["ledger", "record", "--tenant", "acme", "--usage", str(usage), *db]) == 0
    assert "0 recorded, 3 already" in capsys.readouterr().out
    assert main(["invoice", "acme", "--period", "2026-11", *db]) == 2
    assert "period" in capsys.readouterr().err
    terms = ["ledger", "terms", "--tenant", "acme", "--period", "2026-11", "--plan", str(plan)]
    assert main([*terms, "--discount", "7.5", *db]) == 0
    capsys.readouterr()
    assert main(["invoice", "acme", "--period", "2026-11", "--format", "json", *db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "running"
    total = Decimal(doc["statement"]["total"])
    assert main(["invoice", "acme", "--period", "2026-11", "--format", "csv", *db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[-1]["item"] == "total"
    assert Decimal(rows[-1]["amount"]) == total
    assert main(["invoice", "acme", "--period", "2026-11", *db]) == 0
    assert "running" in capsys.readouterr().out
    assert main(["revenue", "--from", "2026-11-01", "--to", "2026-11-30", "--format", "json",
                 *db]) == 0  # fmt: skip
    days = json.loads(capsys.readouterr().out)
    assert len(days) == 30
    assert sum(Decimal(d["revenue"]) for d in days) == total
    by_day = {d["date"]: d for d in days}
    assert Decimal(by_day["2026-11-03"]["usage"]) > 0  # GPU hours of the 3rd
    assert Decimal(by_day["2026-11-04"]["usage"]) == 0
    assert main(["ledger", "finalize", "--tenant", "acme", "--period", "2026-11", *db]) == 0
    assert "finalised" in capsys.readouterr().out
    assert main(["revenue", "--from", "2026-11-01", "--to", "2026-11-30", *db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["status"] for r in rows} == {"final"}
    assert sum(Decimal(r["revenue"]) for r in rows) == total
    assert main(["revenue", "--from", "2026-11-31", "--to", "2026-11-30", *db]) == 2
    assert "--from" in capsys.readouterr().err
    # wallets
    assert main(["wallet", "topup", "acme", "25.00", "--currency", "USD", "--key", "k", *db]) == 0
    assert main(["wallet", "topup", "acme", "25.00", "--currency", "USD", "--key", "k", *db]) == 0
    assert main(["wallet", "topup", "acme", "2.5", "--currency", "USD", "--key", "k", *db]) == 2
    assert main(["wallet", "topup", "acme", "1.5e3", "--currency", "USD", "--key", "z", *db]) == 2
    assert "AMOUNT" in capsys.readouterr().err
    assert main(["wallet", "balance", "acme", "--format", "json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["balance"] == "25"
