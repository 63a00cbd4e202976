"""The CLI's output: human figures in tables, tables that fit the width, exact JSON/YAML."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import yaml

from kubemeter_operator.commands import _output as out


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"), (7, "7"), (999, "999"), (1000, "1k"), (1234, "1.23k"), (39_600_000, "39.6M"),
        (999_960, "1M"), (999_499, "999k"), (1_500_000_000, "1.5B"), (2 * 10**15, "2000T"),
        (-12_345, "-12.3k"), (Decimal("12.345"), "12.3"),
    ],
)  # fmt: skip
def test_counts_read_with_three_significant_digits(value: int | Decimal, text: str) -> None:
    assert out.count(value) == text


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (Decimal("1234.5"), "USD", "1,234.50 USD"), (Decimal("0.005"), "USD", "0.01 USD"),
        (Decimal("1234567"), "JPY", "1,234,567 JPY"), (Decimal("1.2345"), "BHD", "1.235 BHD"),
        (Decimal("-3"), "EUR", "-3.00 EUR"), (None, "USD", "-"), (Decimal(5), None, "5.00"),
    ],
)  # fmt: skip
def test_money_has_the_currency_and_its_minor_units(
    amount: Decimal | None, currency: str | None, text: str
) -> None:
    assert out.money(amount, currency) == text


def test_percent_hours_and_instants_read_plainly() -> None:
    assert out.percent(Decimal("84.50")) == "84.5%"
    assert out.percent(Decimal("100.25")) == "100.25%"
    assert out.percent(Decimal(0)) == "0%"
    assert out.percent(None) == "-"
    assert out.hours(45_000_000) == "12.5"
    assert out.hours(Decimal(3_600_000 * 12_345)) == "12,345"
    assert out.instant(datetime(2026, 11, 20, 10, 0, tzinfo=UTC)) == "2026-11-20T10:00:00Z"


def test_json_and_yaml_keep_every_digit_as_a_string() -> None:
    data = {"total": Decimal("1E+3"), "tiny": Decimal("0.000000000000000000000000000001"),
            "limit": Decimal("5000"), "tokens": 39_600_000, "at": datetime(2026, 11, 1, tzinfo=UTC),
            "rows": (Decimal("1.10"),)}  # fmt: skip
    as_json = json.loads(out.dumps(data, "json"))
    as_yaml = yaml.safe_load(out.dumps(data, "yaml"))
    expected = {"total": "1000", "tiny": "0.000000000000000000000000000001", "limit": "5000",
                "tokens": 39_600_000, "at": "2026-11-01T00:00:00Z", "rows": ["1.10"]}  # fmt: skip
    assert as_json == expected
    assert as_yaml == expected  # "5000" stays a string: YAML quotes it


def test_a_table_aligns_figures_right_and_leaves_no_trailing_blanks() -> None:
    rows = [("acme", "1,234.50 USD", ""), ("b", "5.00 USD", "x")]
    text = out.table(("NAME", "SPEND", "NOTE"), rows, right=(1,))
    assert text.splitlines() == [
        "NAME         SPEND  NOTE",
        "acme  1,234.50 USD",
        "b         5.00 USD  x",
    ]


def test_a_table_over_the_width_cuts_its_widest_shrinkable_column() -> None:
    rows = [("a-tenant-with-a-very-long-name-indeed", "Suspended", "1,234.50 USD")]
    text = out.table(("TENANT", "PHASE", "SPEND"), rows, right=(2,), shrink=(0,), width=40)
    lines = text.splitlines()
    assert max(len(line) for line in lines) == 40
    assert lines[1].startswith("a-tenant-with-…  Suspended")  # 15 = 40 - 9 - 12 - 2 × 2
    assert lines[1].endswith("1,234.50 USD")


def test_a_table_never_cuts_below_the_header_and_overflows_instead() -> None:
    rows = [("long-name", "Suspended", "1,234.50 USD")]
    text = out.table(("TENANT", "PHASE", "SPEND"), rows, right=(2,), shrink=(0,), width=10)
    assert text.splitlines()[1].startswith("long-… ")
    assert out.table(("A",), [("abc",)], width=None) == "A\nabc"


def test_the_width_is_columns_else_unlimited_for_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "72")
    assert out.terminal_width() == 72
    monkeypatch.delenv("COLUMNS")
    assert out.terminal_width() is None  # pytest captures stdout: not a terminal
