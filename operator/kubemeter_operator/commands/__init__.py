"""Subcommands of the `kubemeter` CLI, one module each (see `kubemeter_operator.cli`).

Modules whose name starts with `_` are helpers, not commands. Imports only the standard
library: every command's start pays for it."""

from __future__ import annotations

import argparse
from typing import Any


def documented_parser(
    subparsers: Any, name: str, help: str, doc: str | None
) -> argparse.ArgumentParser:
    """The parser of command `name`: `help` in the command list, and as `--help`'s
    description the module docstring `doc` past its title and synopsis, line breaks kept."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=doc.split("\n\n", 2)[2] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser
