"""The `kubemeter` command, also installed as the `kubectl kubemeter` plugin.

Each subcommand lives in `kubemeter_operator.commands.<name>` and exposes
`register(subparsers)`, which adds its parser with a `run(args) -> int` default. `COMMANDS`
names them with their one-line help, so that `kubemeter --help` imports no command and
`kubemeter quote` imports only `commands.quote`: a command's module (and what it imports:
pydantic, the ledger, the kubernetes client) is loaded only when that command runs. A unit
test checks the table against the modules present and their own help.

Exit status: what the command returns; 2 for bad input or a kubemeter error (with a message
on stderr, never a traceback); 141 when stdout's reader went away (`| head`, see
`commands._output`; `--help` keeps argparse's 0); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence

from kubemeter_operator.errors import KubemeterError

COMMANDS: dict[str, str] = {
    "crds": "generate crds/*.yaml from the API models",
    "invoice": "print a tenant's period statement from the ledger",
    "ledger": "record usage, terms or a final statement in the ledger",
    "operator": "run the operator: meter tenants, write status, serve the events API",
    "quarantine": "list, release or discard usage held back by the metering bounds",
    "quote": "price a usage file against a PricePlan (offline price calculator)",
    "revenue": "recognised revenue per tenant per day (CSV, JSON or YAML)",
    "top": "tenants by spend: burn rate, budget use and phase (from the cluster)",
    "unassigned": "list GPU time and tokens of pods that no Tenant owns",
    "wallet": "top up or show a tenant's prepaid wallet",
    "why": "why a tenant is Warning or Suspended, and what lifts it (from the cluster)",
}
"""Subcommand -> its one-line help (the same text its module registers)."""

PROG = "kubemeter"
PLUGIN_PROG = "kubectl kubemeter"
DESCRIPTION = "Meter GPU time and LLM tokens per tenant, price them, enforce budgets."


class _VersionAction(argparse.Action):
    """`--version`: looks the installed version up only when asked (importlib.metadata alone
    costs ~60 ms, too much for every start)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version('kubemeter')}")
        parser.exit()


def build_parser(load: Iterable[str] | None = None, *, prog: str = PROG) -> argparse.ArgumentParser:
    """The parser; `load`: the commands whose modules are imported and registered (None:
    all of them). The others get a parser with their help only, enough for `--help` and
    for argparse to know the name."""
    wanted = set(COMMANDS) if load is None else set(load)
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        if name in wanted:
            importlib.import_module(f"{__package__}.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = chosen_command(args_list)
    try:
        parser = build_parser([command] if command else [], prog=prog)
        args = parser.parse_args(args_list)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            code = run(args)
        except KubemeterError as exc:
            print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
            code = 2
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except SystemExit:  # argparse after --help or a usage error: flush what it printed
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _broken_pipe()  # argparse ignores a closed pipe itself: keep its status too
        raise
    except KeyboardInterrupt:
        return 130


def _broken_pipe() -> int:
    from kubemeter_operator.commands import _output

    return _output.quiet_broken_pipe()


def plugin_main(argv: Sequence[str] | None = None) -> int:
    """The `kubectl-kubemeter` entry point: the same CLI, named `kubectl kubemeter`."""
    return main(argv, prog=PLUGIN_PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
