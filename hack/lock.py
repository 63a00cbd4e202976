#!/usr/bin/env python3
"""Regenerate the hash-locked requirement files of the images from pyproject.toml.

pyproject.toml is the single source of truth; each lock is compiled from one of its lists:

    requirements/operator.lock   [project] dependencies                  (the operator image)
    requirements/exporter.lock   [project.optional-dependencies] exporter (the exporter image)
    requirements/build.lock      [build-system] requires                 (builds the wheel)

with ``uv pip compile --generate-hashes --python-version 3.11 --python-platform linux``.
The pins of an existing lock are kept (uv prefers them) unless ``--upgrade`` is given, so
a run after editing one dependency moves only what it must. Each lock starts with the list
it was compiled from; ``tests/unit/packaging`` fails when that list no longer matches
pyproject.toml or a pin no longer satisfies it.

This script never installs anything into the images: the Dockerfile does, with
``pip install --require-hashes``. It needs ``uv`` on PATH or next to this Python
(``.venv/bin/pip install uv``; ``make lock`` does that).

Usage: hack/lock.py [--upgrade] [NAME...]   (NAME: operator, exporter, build; default all)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "linux"
SOURCE_LINE = "# compiled from pyproject.toml {table}:"
"""The first line of the inputs block this script writes into each lock."""


def requirement_sets(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, tuple[str, list[str]]]:
    """Lock name -> (the pyproject table it comes from, its requirement strings)."""
    data: dict[str, Any] = tomllib.loads(pyproject.read_text())
    project = data["project"]
    return {
        "operator": ("[project] dependencies", list(project["dependencies"])),
        "exporter": (
            "[project.optional-dependencies] exporter",
            list(project["optional-dependencies"]["exporter"]),
        ),
        "build": ("[build-system] requires", list(data["build-system"]["requires"])),
    }


def find_uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        sys.exit("hack/lock.py: uv not found; install it with `.venv/bin/pip install uv`")
    return found


def inputs_block(table: str, requirements: Sequence[str]) -> str:
    lines = [SOURCE_LINE.format(table=table), *(f"#    {r}" for r in requirements)]
    return "\n".join(lines) + "\n"


def compile_lock(
    uv: str, name: str, table: str, requirements: Sequence[str], *, upgrade: bool
) -> None:
    out = LOCK_DIR / f"{name}.lock"
    cmd = [
        uv,
        "pip",
        "compile",
        "-",
        "--quiet",
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PYTHON_PLATFORM,
        "--custom-compile-command",
        "hack/lock.py",
        "--output-file",
        str(out),
    ]
    if upgrade:
        cmd.append("--upgrade")
    subprocess.run(cmd, input="\n".join(requirements) + "\n", text=True, check=True, cwd=ROOT)
    # uv rewrites the whole file; the inputs go right after its two-line header.
    header, sep, body = out.read_text().partition("\n#    hack/lock.py\n")
    if not sep:
        sys.exit(f"hack/lock.py: unexpected header in {out}")
    out.write_text(f"{header}{sep}{inputs_block(table, requirements)}{body}")
    print(f"[lock] {out.relative_to(ROOT)}: {len(requirements)} inputs", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    sets = requirement_sets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(sets)}")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(sets)
    if unknown:
        parser.error(f"unknown lock: {', '.join(sorted(unknown))}")
    uv = find_uv()
    LOCK_DIR.mkdir(exist_ok=True)
    for name in args.names or list(sets):
        table, requirements = sets[name]
        compile_lock(uv, name, table, requirements, upgrade=args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
