"""CLI start-up benchmark: how long `kubemeter --help`, `kubemeter quote` (the examples'
plan, tenant and 4 KB usage file) and, given a cluster, `kubectl-kubemeter top` take, against
`python -c pass` of the same interpreter measured in the same run [target: --help and quote
<= 0.25 s].

Each command runs as a fresh process (the installed entry points next to this interpreter,
`.venv/bin/kubemeter` and `.venv/bin/kubectl-kubemeter`), output discarded, `--runs` times
after `--warmup` runs, interleaved round-robin so that a busy machine slows them all alike.
Bytecode caching is on for the children (PYTHONDONTWRITEBYTECODE is dropped from their
environment), as it is for an installed package. Printed per command: the median and the
fastest wall time, and the median's ratio to `python -c pass`. `top` is measured when a
cluster is given (`--kubeconfig`, else $KUBECONFIG; a cluster with the CRDs installed),
else left out with a note. `--imports` also prints the slowest imports of `quote`
(`python -X importtime`, cumulative).

Prints figures only (no pass/fail), with the targets beside them.

    .venv/bin/python bench/bench_cli.py [--runs 21] [--warmup 2] [--kubeconfig PATH] [--imports]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLES = REPO / "examples"
TARGET_S = 0.25
QUOTE = ["quote", "--plan", str(EXAMPLES / "priceplan-gpu-standard.yaml"),
         "--usage", str(EXAMPLES / "usage.json"),
         "--tenant", str(EXAMPLES / "tenant-acme.yaml")]  # fmt: skip


def child_env(kubeconfig: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return env


def once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr.decode()}")
    return elapsed


def measure(cases: dict[str, list[str]], runs: int, warmup: int, env: dict[str, str]
            ) -> dict[str, list[float]]:  # fmt: skip
    for _ in range(warmup):
        for argv in cases.values():
            once(argv, env)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            times[name].append(once(argv, env))
    return times


def slowest_imports(argv: list[str], env: dict[str, str], most: int = 12) -> list[str]:
    """The `most` largest cumulative import times of one run (`-X importtime`)."""
    res = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=True)  # fmt: skip
    rows: list[tuple[int, str]] = []
    for line in res.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{us / 1000:8.1f} ms {name}" for us, name in rows[:most]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="a cluster for `top` (default: $KUBECONFIG; none: skip top)")  # fmt: skip
    p.add_argument("--imports", action="store_true", help="print quote's slowest imports")
    args = p.parse_args()
    env = child_env(args.kubeconfig)
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "kubemeter --help": [str(BIN / "kubemeter"), "--help"],
        "kubemeter quote": [str(BIN / "kubemeter"), *QUOTE],
    }
    if args.kubeconfig:
        cases["kubectl-kubemeter top"] = [str(BIN / "kubectl-kubemeter"), "top"]
    times = measure(cases, args.runs, args.warmup, env)
    base = statistics.median(times["python -c pass"])
    print(f"{args.runs} runs each after {args.warmup} warm-up, interleaved; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'command':<24}{'median':>10}{'fastest':>10}{'x python':>10}  target")
    for name, samples in times.items():
        median = statistics.median(samples)
        target = f"<= {TARGET_S} s" if name.startswith("kubemeter ") else ""
        print(f"{name:<24}{median:>9.3f}s{min(samples):>9.3f}s{median / base:>10.1f}  {target}")
    if not args.kubeconfig:
        print("kubectl-kubemeter top: not measured (no --kubeconfig or $KUBECONFIG)")
    if args.imports:
        print("\nslowest imports of kubemeter quote (cumulative, one run):")
        for line in slowest_imports(["-m", "kubemeter_operator.cli", *QUOTE], env):
            print(line)


if __name__ == "__main__":
    main()
