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
    parser.add_argument(
        "--out",
        type=Path,
        action="append",
        help="directory to write; repeatable (default: crds/ and the Helm chart's crds/)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the files are up to date"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    outs: list[Path] = args.out or list(crdgen.DEFAULT_DIRS)
    if args.check:
        stale = [str(d / name) for d in outs for name in crdgen.stale(d)]
        if stale:
            print(f"out of date: {', '.join(stale)}; run `kubemeter crds`", file=sys.stderr)
            return 1
        print("crds are up to date")
        return 0
    for out in outs:
        for path in crdgen.write_all(out):
            print(f"wrote {path}")
    return 0
