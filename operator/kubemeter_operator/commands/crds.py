"""`kubemeter crds`: write (or check) the CRDs generated from the API models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kubemeter_operator import crdgen


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "crds", help="generate crds/*.yaml from the API models"
    )
    parser.add_argument("--out", type=Path, default=Path("crds"), help="directory (crds/)")
    parser.add_argument(
        "--check", action="store_true", help="only check that the files are up to date"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.check:
        stale = crdgen.stale(out)
        if stale:
            print(f"out of date: {', '.join(stale)}; run `kubemeter crds`", file=sys.stderr)
            return 1
        print("crds are up to date")
        return 0
    for path in crdgen.write_all(out):
        print(f"wrote {path}")
    return 0
