"""A reader that goes away (`kubemeter ... | head -1`) ends the command quietly: no
traceback, exit status 141 (128 + SIGPIPE, as kubectl and the coreutils have in a shell)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubemeter_operator.commands._output import BROKEN_PIPE_STATUS

from support.paths import EXAMPLES_DIR

QUOTE = ["quote", "--plan", str(EXAMPLES_DIR / "priceplan-gpu-standard.yaml"),
         "--usage", str(EXAMPLES_DIR / "usage.json")]  # fmt: skip
ENTRY_POINT = Path(sys.executable).parent / "kubemeter"


def run_into_closed_pipe(args: list[str], buffered: bool) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reading end is already closed: writes fail (at
    once when unbuffered, at the flush when buffered)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        argv = [sys.executable, "-m", "kubemeter_operator.cli", *args]
        return subprocess.run(argv, env=env, stdout=write, stderr=subprocess.PIPE, timeout=120,
                              check=False)  # fmt: skip
    finally:
        os.close(write)


BUFFERING = pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])


@BUFFERING
@pytest.mark.parametrize("output", ["yaml", "json", "table"])
def test_a_report_into_a_closed_pipe_exits_141_without_a_traceback(
    buffered: bool, output: str
) -> None:
    res = run_into_closed_pipe([*QUOTE, "-o", output], buffered)
    assert res.stderr == b""
    assert res.returncode == BROKEN_PIPE_STATUS == 141


@BUFFERING
@pytest.mark.parametrize("args", [["--help"], ["quote", "--help"]], ids=["help", "quote-help"])
def test_help_into_a_closed_pipe_exits_0_without_a_traceback(
    buffered: bool, args: list[str]
) -> None:
    res = run_into_closed_pipe(args, buffered)
    assert res.stderr == b""
    assert res.returncode == 0


def test_the_installed_entry_point_cut_by_head_is_quiet() -> None:
    assert ENTRY_POINT.exists(), "pip install -e . installs the kubemeter entry point"
    argv = " ".join([str(ENTRY_POINT), *QUOTE, "-o", "yaml"])
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {argv} | head -1"], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert "Traceback" not in res.stderr
    assert res.stderr == ""
    assert res.stdout.count("\n") == 1
    assert res.returncode in (0, BROKEN_PIPE_STATUS)  # 0 when it was all written before head quit
