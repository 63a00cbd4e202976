"""Plan, tenant and usage files are refused where the API server would refuse them: a key
given twice, a top-level field the CRD does not have, another kind, an integer no field can
hold. Each error names the field (and for YAML the lines), and exits 2 from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemeter_operator.api.files import (
    load_document,
    load_priceplan,
    load_tenant,
    load_usage,
)
from kubemeter_operator.api.usage import OversizedInt
from kubemeter_operator.cli import main
from kubemeter_operator.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PLAN_TEXT = (EXAMPLES / "priceplan-gpu-standard.yaml").read_text()
PLAN = yaml.safe_load(PLAN_TEXT)
TENANT = yaml.safe_load((EXAMPLES / "tenant-acme.yaml").read_text())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(load: Any, path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load(path)
    return info.value


# -- duplicate keys ----------------------------------------------------------------------


def test_a_duplicate_top_level_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    text = "apiVersion: kubemeter.dev/v1alpha1\nkind: PricePlan\nkind: Tenant\nspec: {}\n"
    err = refused(load_priceplan, write(tmp_path, "plan.yaml", text))
    assert err.field == "kind"
    where = tmp_path / "plan.yaml"
    assert err.problem == f"duplicate key 'kind' at line 3, first given at line 2 (in {where})"


def test_a_duplicate_key_deep_in_the_plan_names_its_path(tmp_path: Path) -> None:
    lines = PLAN_TEXT.splitlines()
    at = next(i for i, line in enumerate(lines) if "unitPrice" in line)
    lines.insert(at + 1, lines[at])  # the same unitPrice line again, right below
    path = write(tmp_path, "plan.yaml", "\n".join(lines) + "\n")
    err = refused(load_priceplan, path)
    assert err.field.startswith("spec.meters[")
    assert err.field.endswith(".unitPrice")
    assert f"duplicate key 'unitPrice' at line {at + 2}, first given at line {at + 1}" in str(err)


def test_a_duplicate_key_in_a_flow_mapping_on_one_line_is_found(tmp_path: Path) -> None:
    text = "a: [{x: 1, y: 2, x: 3}]\n"
    err = refused(load_document, write(tmp_path, "doc.yaml", text))
    assert err.field == "a[0].x"
    assert "at line 1, first given at line 1" in err.problem


def test_keys_that_parse_equal_are_duplicates(tmp_path: Path) -> None:
    err = refused(load_document, write(tmp_path, "doc.yaml", "m:\n  1: a\n  0x1: b\n"))
    assert err.field == "m.1"


def test_merge_keys_may_be_overridden_and_aliases_are_fine(tmp_path: Path) -> None:
    text = "base: &b {x: 1, y: 2}\nmerged:\n  <<: *b\n  x: 3\nagain: *b\nlist: [*b, *b]\n"
    data = load_document(write(tmp_path, "doc.yaml", text))
    assert data["merged"] == {"x": 3, "y": 2}
    assert data["list"] == [{"x": 1, "y": 2}] * 2


def test_a_recursive_alias_does_not_hang_the_check(tmp_path: Path) -> None:
    data = load_document(write(tmp_path, "doc.yaml", "a: &a [*a]\n"))
    assert data["a"][0] is data["a"]


def test_a_duplicate_key_in_a_json_file_is_refused(tmp_path: Path) -> None:
    text = '[{"kind": "steps", "steps": 1, "steps": 2, "timestamp": "2026-11-01T00:00:00Z"}]'
    err = refused(load_usage, write(tmp_path, "usage.json", text))
    assert err.field == "steps"
    assert "duplicate key 'steps' in a JSON object" in err.problem


def test_deeply_nested_documents_are_an_input_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert "not valid" in refused(load_document, write(tmp_path, "d.json", deep)).problem
    assert "not valid YAML" in refused(load_document, write(tmp_path, "d.yaml", deep)).problem


# -- top-level fields and kind -----------------------------------------------------------


@pytest.mark.parametrize("field", ["spce", "data", "Spec"])
def test_an_unknown_top_level_field_of_a_plan_is_refused_naming_it(
    tmp_path: Path, field: str
) -> None:
    path = write(tmp_path, "plan.yaml", yaml.safe_dump({**PLAN, field: {"x": 1}}))
    err = refused(load_priceplan, path)
    assert err.field == field
    assert err.problem.startswith(
        "unknown field: a PricePlan object has only apiVersion, kind, metadata, spec, status"
    )


def test_an_unknown_top_level_field_of_a_tenant_is_refused_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", yaml.safe_dump({**TENANT, "budget": {"limit": "1"}}))
    err = refused(load_tenant, path)
    assert err.field == "budget"
    assert "a Tenant object has only" in err.problem


def test_status_and_metadata_are_allowed_at_the_top(tmp_path: Path) -> None:
    plan = load_priceplan(write(tmp_path, "p.yaml", yaml.safe_dump({**PLAN, "status": {}})))
    assert plan.name == "gpu-standard"


@pytest.mark.parametrize("missing", ["kind", "apiVersion"])
def test_a_plan_without_kind_or_api_version_is_refused_naming_it(
    tmp_path: Path, missing: str
) -> None:
    data = {k: v for k, v in PLAN.items() if k != missing}
    err = refused(load_priceplan, write(tmp_path, "p.yaml", yaml.safe_dump(data)))
    assert err.field == missing
    assert err.problem.startswith(f"required: a PricePlan object names its {missing}")


def test_a_plan_given_as_the_tenant_is_refused_naming_kind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan = write(tmp_path, "plan.yaml", PLAN_TEXT)
    usage = write(tmp_path, "usage.json", "[]")
    argv = ["quote", "--plan", str(plan), "--usage", str(usage), "--tenant", str(plan)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kubemeter quote: error: kind: Input should be 'Tenant', not 'PricePlan'")
    assert "plan.yaml" in err


def test_a_tenant_given_as_the_plan_is_refused_naming_kind(tmp_path: Path) -> None:
    err = refused(load_priceplan, write(tmp_path, "t.yaml", yaml.safe_dump(TENANT)))
    assert err.field == "kind"


# -- giant integers ----------------------------------------------------------------------


def usage_text(count: str, suffix: str) -> str:
    if suffix == ".json":
        return ('[{"kind": "tokens", "model": "m", "timestamp": "2026-11-01T00:00:00Z", '
                f'"promptTokens": {count}}}]')  # fmt: skip
    return (
        "- kind: tokens\n  model: m\n  timestamp: '2026-11-01T00:00:00Z'\n"
        f"  promptTokens: {count}\n"
    )


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_usage_file_with_a_5000_digit_integer_names_the_field(
    tmp_path: Path, suffix: str
) -> None:
    err = refused(load_usage, write(tmp_path, "usage" + suffix, usage_text("9" * 5000, suffix)))
    assert err.field == "usage[0].promptTokens"
    assert err.problem.startswith("an integer of 5000 digits is too large")


def test_yaml_integers_keep_their_yaml_forms(tmp_path: Path) -> None:
    data = load_document(write(tmp_path, "d.yaml", "a: 0x1f\nb: 1_000\nc: -12\nd: 017\n"))
    assert data == {"a": 31, "b": 1000, "c": -12, "d": 15}
    big = load_document(write(tmp_path, "e.yaml", "a: " + "1_" * 50 + "1\n"))["a"]
    assert isinstance(big, OversizedInt)
    assert big.digits == 51


def test_a_giant_integer_in_a_plan_names_the_field(tmp_path: Path) -> None:
    text = PLAN_TEXT.replace('platformFee: "99.00"', "platformFee: " + "9" * 5000)
    assert text != PLAN_TEXT
    err = refused(load_priceplan, write(tmp_path, "plan.yaml", text))
    assert err.field == "spec.platformFee"


@pytest.mark.parametrize("command", ["quote", "ledger"])
def test_cli_with_a_giant_integer_in_the_usage_file_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    usage = write(tmp_path, "usage.json", usage_text("9" * 5000, ".json"))
    if command == "quote":
        plan = write(tmp_path, "plan.yaml", PLAN_TEXT)
        argv = ["quote", "--plan", str(plan), "--usage", str(usage)]
    else:
        argv = ["ledger", "record", "--tenant", "acme", "--usage", str(usage),
                "--db", str(tmp_path / "ledger.db")]  # fmt: skip
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"kubemeter {command}: error: usage[0].promptTokens: an integer of 5000 digits is too large"
    )
    assert "Traceback" not in err


def test_json_files_refuse_nan(tmp_path: Path) -> None:
    err = refused(load_usage, write(tmp_path, "usage.json", "[NaN]"))
    assert "NaN is not valid JSON" in err.problem


def test_a_json_usage_file_still_loads(tmp_path: Path) -> None:
    records = load_usage(EXAMPLES / "usage.json")
    assert records
    assert json.loads((EXAMPLES / "usage.json").read_text())[0]["kind"] == records[0].kind
