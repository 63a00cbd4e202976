"""Usage records and periods are bounded: counts, instants and custom quantities that no
sum, period or column could hold are refused naming the field, and even an integer of
thousands of digits gives a message, never a traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubemeter_operator.api.errors import validation_issues
from kubemeter_operator.api.usage import (
    INPUT,
    MAX_COUNT,
    MAX_INT_DIGITS,
    USAGE_LIST,
    CustomUsage,
    OversizedInt,
    bounded_int,
)
from kubemeter_operator.cli import main
from kubemeter_operator.usage.periods import Period, PeriodError

TS = "2026-11-01T00:00:00Z"


def issues(items: list[dict[str, Any]], context: dict[str, Any] | None = INPUT) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        USAGE_LIST.validate_python(items, context=context)
    str(info.value)  # formatting the error never raises, whatever the input
    return validation_issues(info.value, "usage", items)


def tokens(**fields: Any) -> dict[str, Any]:
    return {"kind": "tokens", "model": "m", "timestamp": TS, **fields}


def gpu(**fields: Any) -> dict[str, Any]:
    return {"kind": "gpu", "model": "H100", "allocatedMs": 1000,
            "windowStart": TS, "windowEnd": "2026-11-01T01:00:00Z", **fields}  # fmt: skip


def custom(quantity: Any) -> dict[str, Any]:
    return {"kind": "custom", "name": "credits", "quantity": quantity, "timestamp": TS}


# -- counts ------------------------------------------------------------------------------


def test_max_count_fits_9223_records_in_a_signed_64_bit_sum() -> None:
    assert MAX_COUNT == 10**15
    assert 9223 * MAX_COUNT <= 2**63 - 1 < 9224 * MAX_COUNT
    assert MAX_COUNT // (3_600_000 * 24 * 365) > 31_000  # milliseconds: 31,000 GPU-years


def test_a_count_of_max_count_is_accepted() -> None:
    (record,) = USAGE_LIST.validate_python([tokens(promptTokens=MAX_COUNT)])
    assert record.prompt_tokens == MAX_COUNT  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (tokens(promptTokens=MAX_COUNT + 1), "usage[0].promptTokens"),
        (tokens(completionTokens=2**63), "usage[0].completionTokens"),
        ({"kind": "steps", "steps": 10**18, "timestamp": TS}, "usage[0].steps"),
        ({"kind": "requests", "requests": 10**16, "timestamp": TS}, "usage[0].requests"),
        (gpu(allocatedMs=MAX_COUNT + 1), "usage[0].allocatedMs"),
    ],
)
def test_a_count_above_max_count_is_refused_naming_the_field(
    record: dict[str, Any], field: str
) -> None:
    (issue,) = issues([record])
    assert issue[0] == field
    assert str(MAX_COUNT) in issue[1]


def test_bounds_on_counts_and_instants_hold_without_the_input_context() -> None:
    assert [p for p, _ in issues([tokens(promptTokens=MAX_COUNT + 1)], None)] == [
        "usage[0].promptTokens"
    ]
    assert [p for p, _ in issues([tokens(timestamp="1969-12-31T23:59:59Z")], None)] == [
        "usage[0].timestamp"
    ]


# -- giant integers ----------------------------------------------------------------------


def test_bounded_int_converts_up_to_max_int_digits_and_never_more() -> None:
    assert bounded_int("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    assert bounded_int("-" + "9" * MAX_INT_DIGITS) == -int("9" * MAX_INT_DIGITS)
    big = bounded_int("7" * 5000)
    assert isinstance(big, OversizedInt)
    assert repr(big) == str(big) == "<an integer of 5000 digits>"


def test_json_with_a_5000_digit_integer_names_the_field() -> None:
    text = json.dumps([tokens(promptTokens=0)]).replace('"promptTokens": 0', '"promptTokens": '
                                                        + "1" * 5000)  # fmt: skip
    with pytest.raises(ValueError, match="4300"):
        json.loads(text)  # what Python's json does by itself
    data = json.loads(text, parse_int=bounded_int)
    (issue,) = issues(data)
    assert issue == (
        "usage[0].promptTokens",
        "an integer of 5000 digits is too large (at most 1000000000000000 per record)",
    )


@pytest.mark.parametrize("field", ["id", "model", "tenant"])
def test_a_giant_integer_in_a_text_field_is_refused_naming_it(field: str) -> None:
    (issue,) = issues([tokens(**{field: OversizedInt(5000)})])
    assert issue[0] == f"usage[0].{field}"


def test_error_text_of_a_huge_python_int_can_be_formatted() -> None:
    huge = int(Decimal("9" * 5000))  # beyond the 4300-digit str() limit
    (issue,) = issues([tokens(promptTokens=huge)])
    assert issue[0] == "usage[0].promptTokens"


# -- instants ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (tokens(timestamp="1969-12-31T23:59:59.999999Z"), "usage[0].timestamp"),
        (tokens(timestamp="0001-01-01T00:00:00+05:00"), "usage[0].timestamp"),
        (tokens(timestamp="9999-01-01T00:00:00Z"), "usage[0].timestamp"),
        (tokens(timestamp="9998-12-31T23:30:00-01:00"), "usage[0].timestamp"),  # 9999 in UTC
        (tokens(timestamp=-1), "usage[0].timestamp"),
        (gpu(windowStart="1969-12-31T23:00:00Z"), "usage[0].windowStart"),
        (gpu(windowEnd="9999-12-31T23:59:59-05:00"), "usage[0].windowEnd"),
        ({"kind": "steps", "steps": 1, "timestamp": "1900-01-01T00:00:00Z"}, "usage[0].timestamp"),
        (custom("1") | {"timestamp": "9999-06-01T00:00:00Z"}, "usage[0].timestamp"),
    ],
)
def test_an_instant_outside_the_years_1970_to_9998_is_refused_naming_the_field(
    record: dict[str, Any], field: str
) -> None:
    found = issues([record])
    assert found[0][0] == field
    assert "outside the years 1970..9998 (UTC)" in found[0][1]


def test_the_first_and_last_instants_of_the_billable_years_are_accepted() -> None:
    first, last = "1970-01-01T00:00:00Z", "9998-12-31T23:59:59.999999Z"
    recs = USAGE_LIST.validate_python(
        [tokens(timestamp=first), tokens(timestamp=last),
         gpu(windowStart=first, windowEnd="1970-01-01T00:00:01Z"),
         gpu(windowStart="9998-12-31T23:00:00Z", windowEnd=last)]
    )  # fmt: skip
    assert [Period.of(r.at) for r in recs] == [Period(1970, 1), Period(9998, 12)] * 2
    assert Period(9998, 12).end == datetime(9999, 1, 1, tzinfo=UTC)


# -- custom quantities -------------------------------------------------------------------


@pytest.mark.parametrize(
    "quantity",
    ["9" * 24 + "." + "9" * 12, "0.000000000001", "1.500000000000000000000", "0", 12],
)
def test_custom_quantities_within_24_digits_and_12_places_are_accepted(quantity: Any) -> None:
    (record,) = USAGE_LIST.validate_python([custom(quantity)], context=INPUT)
    assert isinstance(record, CustomUsage)
    assert record.quantity == Decimal(quantity)


@pytest.mark.parametrize(
    ("quantity", "fragment"),
    [
        ("1" + "0" * 24, "is too large (25 integer digits; at most 24)"),
        ("0.0000000000001", "has more than 12 decimal places (13)"),
        ("1." + "1" * 30, "has more than 12 decimal places (30)"),
        (10**30, "is too large (31 integer digits; at most 24)"),
        (OversizedInt(5000), "an integer of 5000 digits is too large (at most 24 integer digits)"),
    ],
)
def test_custom_quantities_beyond_the_input_bounds_are_refused_naming_the_field(
    quantity: Any, fragment: str
) -> None:
    (issue,) = issues([custom(quantity)])
    assert issue == ("usage[0].quantity", fragment)


def test_custom_digits_are_input_bounds_only() -> None:
    # Records built inside kubemeter (or read back from the ledger) are not re-bounded:
    # the ledger's own column limits decide there.
    (record,) = USAGE_LIST.validate_python([custom("0.0000000000001")])
    assert record.quantity == Decimal("1E-13")  # type: ignore[union-attr]


# -- periods -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1970-01", "2026-11", "9998-12"])
def test_periods_of_the_billable_years_parse(text: str) -> None:
    assert str(Period.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0000-01", "'0000-01' is outside the years 1970..9998"),
        ("1969-12", "'1969-12' is outside the years 1970..9998"),
        ("9999-12", "'9999-12' is outside the years 1970..9998"),
        ("2026-13", "'2026-13' is not of the form YYYY-MM"),
    ],
)
def test_period_parse_refuses_other_years_with_a_value_error_naming_period(
    text: str, problem: str
) -> None:
    with pytest.raises(PeriodError) as info:
        Period.parse(text)
    assert isinstance(info.value, ValueError)  # what GET /v1/tenants/{name}/usage catches
    assert info.value.problem == problem
    assert str(info.value) == f"period: {problem}"


@pytest.mark.parametrize(
    "instant",
    [
        datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # astimezone would overflow
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
        datetime(9999, 1, 1, tzinfo=UTC),
    ],
    ids=str,
)
def test_period_of_refuses_instants_outside_the_billable_years(instant: datetime) -> None:
    with pytest.raises(PeriodError, match=r"outside the years 1970\.\.9998"):
        Period.of(instant)


def test_period_of_the_billable_years_edges() -> None:
    assert Period.of(datetime(1970, 1, 1, tzinfo=UTC)) == Period(1970, 1)
    assert Period.of(datetime(9998, 12, 31, 23, 59, tzinfo=UTC)) == Period(9998, 12)
    with pytest.raises(ValueError, match="time zone"):
        Period.of(datetime(2026, 11, 1))  # noqa: DTZ001


# -- period and date flags ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["invoice", "acme", "--period", "0000-01"],
         "kubemeter invoice: error: --period: '0000-01' is outside the years 1970..9998"),
        (["invoice", "acme", "--period", "9999-12"],
         "kubemeter invoice: error: --period: '9999-12' is outside the years 1970..9998"),
        (["invoice", "acme", "--period", "2026-13"],
         "kubemeter invoice: error: --period: '2026-13' is not of the form YYYY-MM"),
        (["ledger", "finalize", "--tenant", "acme", "--period", "0000-01"],
         "kubemeter ledger: error: --period: '0000-01' is outside the years 1970..9998"),
        (["revenue", "--from", "0000-01-01", "--to", "2026-11-30"],
         "kubemeter revenue: error: --from: '0000-01-01' is not a date of the form YYYY-MM-DD"),
        (["revenue", "--from", "0001-01-01", "--to", "2026-11-30"],
         "kubemeter revenue: error: --from: '0001-01-01' is outside the years 1970..9998"),
        (["revenue", "--from", "2026-11-01", "--to", "9999-12-31"],
         "kubemeter revenue: error: --to: '9999-12-31' is outside the years 1970..9998"),
    ],
)  # fmt: skip
def test_period_and_date_flags_outside_the_billable_years_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    db = tmp_path / "ledger.db"
    assert main([*argv, "--db", str(db)]) == 2
    out, err = capsys.readouterr()
    assert (out, err.strip()) == ("", message)
    assert not db.exists()  # refused before the ledger is opened
