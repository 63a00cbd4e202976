"""What /proc says about a process, for the benchmarks' figures: resident memory, CPU time.

Linux only. It reads and never signals; a process that is gone reads as zeros.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def memory_mb(pid: int | None = None) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` (None: this process) in MB: resident now, and at its peak."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{'self' if pid is None else pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                values[key] = int(val.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
