"""How the CLI prints data: `-o table|json|yaml`, tables that fit the terminal, human figures.

- `add_output`: the one `-o/--output` flag of every command that prints data.
- `emit`: JSON or YAML with exact figures: a `Decimal` becomes its plain string (never a
  float, never exponent form), a datetime its RFC 3339 text; what a report holds is printed
  as is.
- `table`: rows fitted to the terminal. The width is $COLUMNS, else the terminal's when
  stdout is one; a pipe or a file gets whole lines (like `kubectl get`). Over the width, the
  widest shrinkable columns are cut first, with `…`.
- `count`, `money`, `percent`, `hours`: figures for tables (`39.6M`, `1,234.50 USD`).
- `quiet_broken_pipe`: what the CLI does when the reader of stdout goes away (`| head`):
  no traceback, exit status 141 (128 + SIGPIPE), as kubectl and the coreutils have in a
  shell, so `set -o pipefail` sees that the output was cut.

It is imported on the path of every command, so it imports only the standard library (PyYAML
when YAML is asked for, `money` for minor units): never pydantic, the kubernetes client or
the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TextIO

from kubemeter_operator.money import CURRENCY_MINOR_UNITS

FORMATS = ("table", "json", "yaml")
BROKEN_PIPE_STATUS = 141
"""Exit status when stdout's reader is gone: 128 + SIGPIPE, what a shell reports for kubectl."""
ELLIPSIS = "…"
ROOMY = 20
"""Long cells are cut to this many characters before a table leaves columns out."""
MIN_COLUMN = 4
"""A cut column keeps at least this many characters (or its header's)."""
_SCALES = ((Decimal(1), ""), (Decimal(10**3), "k"), (Decimal(10**6), "M"),
           (Decimal(10**9), "B"), (Decimal(10**12), "T"))  # fmt: skip


def add_output(
    parser: argparse.ArgumentParser,
    *,
    choices: Sequence[str] = FORMATS,
    default: str = "table",
    dest: str = "output",
    aliases: Sequence[str] = (),
) -> None:
    """`-o/--output FORMAT` (plus `aliases`, e.g. an older `--format`) into `args.<dest>`."""
    parser.add_argument(
        "-o", "--output", *aliases, dest=dest, choices=tuple(choices), default=default,
        help=f"output format (default: {default}); json and yaml keep exact figures",
    )  # fmt: skip


def plain(value: Decimal) -> str:
    """A Decimal in plain notation (`1E+3` -> `1000`), as the API's decimal strings are."""
    return format(value, "f")


def instant(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, to the second (or the microsecond when it has one)."""
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def exact(data: Any) -> Any:
    """`data` with Decimals as plain strings, datetimes as RFC 3339 and tuples as lists:
    what JSON and YAML print without losing a digit."""
    if isinstance(data, Decimal):
        return plain(data)
    if isinstance(data, datetime):
        return instant(data)
    if isinstance(data, Mapping):
        return {str(k): exact(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [exact(v) for v in data]
    return data


def dumps(data: Any, fmt: str) -> str:
    """`data` as JSON (indented) or YAML (block style, keys in their order), exactly."""
    body = exact(data)
    if fmt == "yaml":
        import yaml  # only when asked for: it is not free to import

        return str(yaml.safe_dump(body, sort_keys=False, allow_unicode=True)).rstrip("\n")
    return json.dumps(body, indent=2, ensure_ascii=False)


def emit(data: Any, fmt: str, out: TextIO | None = None) -> None:
    """Print `data` as `fmt` (json or yaml) to `out` (stdout)."""
    print(dumps(data, fmt), file=out or sys.stdout)


def _round(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def count(value: Decimal | int, digits: int = 3) -> str:
    """A count for reading: `39600000` -> `39.6M`, `1234` -> `1.23k`, `999` -> `999`.

    At most `digits` significant digits, rounded half-up, trailing zeros dropped; suffixes
    k, M, B (10^9) and T. Exact counts are in -o json|yaml."""
    number = Decimal(value)
    sign = "-" if number < 0 else ""
    number = abs(number)
    step = max((i for i, (scale, _) in enumerate(_SCALES) if number >= scale), default=0)
    while True:
        scale, suffix = _SCALES[step]
        scaled = number / scale
        shown = _round(scaled, max(digits - len(str(int(scaled))), 0))
        if shown < 1000 or step == len(_SCALES) - 1:
            break
        step += 1  # 999.96k rounds to 1000k: say 1M
    text = plain(shown.normalize()) if shown else "0"
    return f"{sign}{text}{suffix}"


def places(currency: str | None) -> int:
    """The currency's minor units (2 for one this CLI does not know)."""
    return CURRENCY_MINOR_UNITS.get(currency or "", 2)


def money(amount: Decimal | None, currency: str | None, *, code: bool = True) -> str:
    """`1234.5, USD` -> `1,234.50 USD` (`1,234.50` without `code`): the currency's minor
    units, rounded half-up; `-` when the amount is unknown."""
    if amount is None:
        return "-"
    digits = places(currency)
    text = f"{_round(amount, digits):,.{digits}f}"
    return f"{text} {currency}" if currency and code else text


def percent(value: Decimal | None) -> str:
    """`84.50` -> `84.5%`; `-` if unknown."""
    if value is None:
        return "-"
    return f"{plain(_round(value, 2).normalize()) if value else '0'}%"


def hours(ms: Decimal | int) -> str:
    """Milliseconds as hours for reading: `45000000` -> `12.5`, at most 2 decimals."""
    value = _round(Decimal(ms) / Decimal(3_600_000), 2)
    return f"{value.normalize():,f}" if value else "0"


def terminal_width(out: TextIO | None = None) -> int | None:
    """The width a table must fit: $COLUMNS, else the terminal's; None for a pipe or file."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = out or sys.stdout
    try:
        if stream.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending in `…` when it was longer."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS if width > 0 else ""


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    shrink: Sequence[int] | None = None,
    drop: Sequence[int] = (),
    width: int | None = None,
) -> str:
    """Rows under headers, columns two spaces apart, no trailing blanks.

    `right`: indexes of right-aligned columns (figures). Over `width` (None: never), the
    `shrink` columns (default: the left-aligned ones, the last first) are cut, in that
    order, down to ROOMY characters; if that is not enough, the `drop` columns are left out,
    in that order; then the `shrink` columns are cut further, down to MIN_COLUMN characters
    or their header. What still does not fit overflows."""
    body = [list(r) for r in rows]
    n = len(headers)
    for row in body:
        if len(row) != n:
            raise ValueError(f"row {row!r} has {len(row)} cells, headers {n}")
    align_right = set(right)
    order = [i for i in reversed(range(n)) if i not in align_right] if shrink is None else shrink
    widths = [max([len(headers[i]), *(len(r[i]) for r in body)]) for i in range(n)]
    shown = list(range(n))

    def excess() -> int:
        return sum(widths[i] for i in shown) + 2 * (len(shown) - 1) - (width or 0)

    if width is not None:

        def cut_to(least: int) -> None:
            for i in order:
                if i in shown:
                    floor = max(least, len(headers[i]))
                    widths[i] -= max(min(excess(), widths[i] - floor), 0)

        cut_to(ROOMY)
        for i in drop:
            if excess() <= 0:
                break
            shown.remove(i)
        cut_to(MIN_COLUMN)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i in shown:
            text = cut(cells[i], widths[i])
            out.append(text.rjust(widths[i]) if i in align_right else text.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in body)])


def quiet_broken_pipe() -> int:
    """After a BrokenPipeError on stdout: point stdout at /dev/null (so the interpreter's
    last flush cannot fail again and print a traceback) and return BROKEN_PIPE_STATUS."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass
    return BROKEN_PIPE_STATUS
