"""`kubemeter quote` error handling: exit 2 with a message that names the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemeter_operator.cli import main
from kubemeter_operator.commands.quote import default_period
from kubemeter_operator.usage import Period

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PLAN = yaml.safe_load((EXAMPLES / "priceplan-gpu-standard.yaml").read_text())
USAGE = json.loads((EXAMPLES / "usage.json").read_text())


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


def quote(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *, plan: Any = PLAN, usage: Any = USAGE
) -> tuple[int, str, str]:
    code = main(
        ["quote", "--plan", write(tmp_path, "plan.yaml", plan),
         "--usage", write(tmp_path, "usage.json", usage)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def with_meter(index: int, **changes: Any) -> dict[str, Any]:
    plan = json.loads(json.dumps(PLAN))
    plan["spec"]["meters"][index].update(changes)
    return plan


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (with_meter(1, kind="gpuHours"), "spec.meters[1].kind: Input should be 'gpuTime'"),
        (with_meter(0, pricing={"model": "graduated", "tiers": [
            {"upTo": 10.5, "unitPrice": "1"}, {"unitPrice": "1"}]}),
         "spec.meters[0].pricing.tiers[0].upTo: must be a decimal string such as \"10.5\", "
         "not a float"),
        (with_meter(2, pricing={"model": "flat", "unitPrice": "2,40"}),
         "spec.meters[2].pricing.unitPrice: '2,40' is not a non-negative decimal"),
        (with_meter(3, included="-1"), "spec.meters[3].included: '-1' is not"),
        (with_meter(7, pricing={"model": "volume", "tiers": [{"upTo": "5", "unitPrice": "1"}]}),
         "spec.meters[7].pricing.tiers: the last tier must be unbounded"),
        ({**PLAN, "kind": "Tenant"}, "kind: Input should be 'PricePlan'"),
        ({**PLAN, "spec": {**PLAN["spec"], "currency": "usd"}}, "spec.currency:"),
    ],
)  # fmt: skip
def test_bad_plan_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, plan: Any, message: str
) -> None:
    code, out, err = quote(capsys, tmp_path, plan=plan)
    assert code == 2
    assert out == ""
    assert message in err
    assert "plan.yaml" in err


@pytest.mark.parametrize(
    ("index", "changes", "message"),
    [
        (0, {"allocatedMs": -5}, "usage[0].allocatedMs: Input should be greater than or equal"),
        (9, {"kind": "token"}, "usage[9].kind: Input tag 'token'"),
        (9, {"promptTokens": "12"}, "usage[9].promptTokens: Input should be a valid integer"),
        (13, {"steps": 1.0}, "usage[13].steps: Input should be a valid integer"),
        (0, {"windowStart": "yesterday"}, "usage[0].windowStart: Input should be a valid"),
        (13, {"steps": 10**15 + 1}, "usage[13].steps: Input should be less than or equal to"),
        (13, {"timestamp": "1969-12-31T00:00:00Z"},
         "usage[13].timestamp: 1969-12-31T00:00:00+00:00 is outside the years 1970..9998 (UTC)"),
        (0, {"windowEnd": "9999-01-01T00:00:00Z"},
         "usage[0].windowEnd: 9999-01-01T00:00:00+00:00 is outside the years 1970..9998 (UTC)"),
    ],
)  # fmt: skip
def test_bad_usage_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: int, changes: Any, message: str
) -> None:
    usage = json.loads(json.dumps(USAGE))
    usage[index].update(changes)
    code, _, err = quote(capsys, tmp_path, usage=usage)
    assert code == 2
    assert message in err


def test_custom_float_quantity_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    usage = [{"kind": "custom", "name": "c", "quantity": 2.5, "timestamp": "2026-11-01T00:00:00Z"}]
    code, _, err = quote(capsys, tmp_path, usage=usage)
    assert code == 2
    assert 'usage[0].quantity: must be a decimal string such as "2.5", not a float' in err


def test_unreadable_and_malformed_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = write(tmp_path, "plan.yaml", PLAN)
    assert main(["quote", "--plan", str(tmp_path / "nope.yaml"), "--usage", "x.json"]) == 2
    assert "nope.yaml: cannot read the file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kind": "gpu",]')
    assert main(["quote", "--plan", plan, "--usage", str(bad)]) == 2
    assert "bad.json: not valid JSON" in capsys.readouterr().err
    notlist = write(tmp_path, "obj.json", {"kind": "gpu"})
    assert main(["quote", "--plan", plan, "--usage", notlist]) == 2
    assert "usage: expected a JSON list" in capsys.readouterr().err
    yml = tmp_path / "broken.yaml"
    yml.write_text("spec: [unclosed")
    assert main(["quote", "--plan", str(yml), "--usage", notlist]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def test_bad_period_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan, usage = write(tmp_path, "p.yaml", PLAN), write(tmp_path, "u.json", [])
    assert main(["quote", "--plan", plan, "--usage", usage, "--period", "2026-13"]) == 2
    assert "--period: '2026-13' is not of the form YYYY-MM" in capsys.readouterr().err


def test_empty_usage_quotes_the_platform_fee_for_the_given_period(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan, usage = write(tmp_path, "p.yaml", PLAN), write(tmp_path, "u.json", [])
    assert main(["quote", "--plan", plan, "--usage", usage, "--period", "2027-01"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["period"], s["total"], s["unpriced"]) == ("2027-01", "99.00", [])


def test_default_period_is_the_latest_usage_instant() -> None:
    from kubemeter_operator.api.usage import USAGE_LIST

    recs = USAGE_LIST.validate_python(
        [{"kind": "gpu", "model": "x", "allocatedMs": 1,
          "windowStart": "2026-11-30T23:00:00Z", "windowEnd": "2026-12-01T00:00:00Z"},
         {"kind": "steps", "steps": 1, "timestamp": "2026-11-15T00:00:00Z"}]
    )  # fmt: skip
    # The window ends exactly at the boundary: its last millisecond is in November.
    assert default_period(recs) == Period(2026, 11)
    from datetime import UTC, datetime

    assert default_period([], now=datetime(2027, 3, 5, tzinfo=UTC)) == Period(2027, 3)


def test_tenant_filter_and_plan_mismatch_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tenant = yaml.safe_load((EXAMPLES / "tenant-globex.yaml").read_text())
    usage = [
        {"kind": "steps", "steps": 5000, "tenant": "acme", "timestamp": "2026-11-01T00:00:00Z"},
        {"kind": "steps", "steps": 2000, "tenant": "globex", "timestamp": "2026-11-01T00:00:00Z"},
    ]
    code = main(
        ["quote", "--plan", write(tmp_path, "p.yaml", PLAN), "--usage",
         write(tmp_path, "u.json", usage), "--tenant", write(tmp_path, "t.yaml", tenant)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert "refers to plan 'tokens-jpy'" in err
    s = json.loads(out)
    steps = next(line for line in s["lines"] if line["meter"] == "agent-steps")
    assert steps["quantity"] == "2000"  # acme's record is not globex's usage
    # 2000 - 1000 included = 1000 -> 2 packages x 2.50 = 5.00; 99 + 5 = 104 - 2.5 % (2.60)
    assert (s["subtotal"], s["discount"], s["total"]) == ("104.00", "2.60", "101.40")


# -- event ids ---------------------------------------------------------------------------


def steps_quantity(out: str) -> str:
    s = json.loads(out)
    return str(next(line for line in s["lines"] if line["meter"] == "agent-steps")["quantity"])


def steps(i: int | None, count: int, at: str = "2026-11-01T00:00:00Z", **extra: Any) -> Any:
    record = {"kind": "steps", "steps": count, "timestamp": at, **extra}
    return record if i is None else {"id": f"s{i}", **record}


@pytest.mark.parametrize(
    ("usage", "quantity"),
    [
        ([steps(1, 2000), steps(2, 500),
          steps(1, 2000, at="2026-11-01T01:00:00+01:00"),  # the same instant, other offset
          steps(2, 500)], "2500"),
        ([steps(None, 2000), steps(None, 2000)], "4000"),  # without ids, every record counts
        ([steps(1, 2000, tenant="acme"), steps(1, 500, tenant="globex")], "2500"),
    ],
    ids=["replays-count-once", "no-ids", "ids-are-per-tenant"],
)  # fmt: skip
def test_a_replayed_event_id_with_the_same_payload_is_counted_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, usage: Any, quantity: str
) -> None:
    code, out, _ = quote(capsys, tmp_path, usage=usage)
    assert code == 0
    assert steps_quantity(out) == quantity


def test_an_event_id_reused_with_another_payload_exits_2_naming_both_indexes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    usage = [steps(0, 1), {"id": "req-7", "kind": "requests", "requests": 5,
                           "timestamp": "2026-11-02T00:00:00Z"},
             steps(2, 1), steps(3, 1),
             {"id": "req-7", "kind": "requests", "requests": 6,
              "timestamp": "2026-11-02T00:00:00Z"}]  # fmt: skip
    code, out, err = quote(capsys, tmp_path, usage=usage)
    assert (code, out) == (2, "")
    assert err.strip() == (
        "kubemeter quote: error: usage[4].id: event id 'req-7' is used twice "
        "(usage[1] and usage[4]) with different payloads"
    )


def test_with_tenant_a_record_naming_no_tenant_is_the_tenants_own_event(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tenant = yaml.safe_load((EXAMPLES / "tenant-globex.yaml").read_text())
    usage = [steps(1, 2000, tenant="globex"), steps(1, 2000), steps(1, 7, tenant="acme")]
    code = main(
        ["quote", "--plan", write(tmp_path, "p.yaml", PLAN), "--usage",
         write(tmp_path, "u.json", usage), "--tenant", write(tmp_path, "t.yaml", tenant)]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert steps_quantity(out) == "2000"


def test_quote_and_the_ledger_share_one_canonical_form() -> None:
    from kubemeter_operator.api.usage import USAGE_LIST
    from kubemeter_operator.ledger import codec, columns
    from kubemeter_operator.usage import canonical

    assert codec.record_json is canonical.record_json
    assert codec.instant is canonical.instant
    assert codec.canonical_json is canonical.canonical_json
    assert columns.plain is canonical.plain
    c = {"kind": "custom", "name": "c"}
    a, b = USAGE_LIST.validate_python(
        [{**c, "quantity": "1.50", "timestamp": "2026-11-01T09:00:00+09:00"},
         {**c, "quantity": "1.5", "timestamp": "2026-11-01T00:00:00Z"}]
    )  # fmt: skip
    expected = '{"kind":"custom","name":"c","quantity":"1.5","timestamp":"2026-11-01T00:00:00Z"}'
    assert canonical.record_json(a) == canonical.record_json(b) == expected


# -- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["0000-01", "9999-12", "1969-12"])
def test_a_period_outside_the_billable_years_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, period: str
) -> None:
    plan, usage = write(tmp_path, "p.yaml", PLAN), write(tmp_path, "u.json", [])
    assert main(["quote", "--plan", plan, "--usage", usage, "--period", period]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kubemeter quote: error: --period: {period!r} is outside the years 1970..9998"
    )


def test_a_custom_quantity_with_13_decimal_places_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    usage = [{"kind": "custom", "name": "c", "quantity": "0.0000000000001",
              "timestamp": "2026-11-01T00:00:00Z"}]  # fmt: skip
    code, _, err = quote(capsys, tmp_path, usage=usage)
    assert code == 2
    assert "usage[0].quantity: has more than 12 decimal places (13)" in err
