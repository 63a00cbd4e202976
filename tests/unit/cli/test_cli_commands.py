"""The CLI's command table: it names every command module, with the help the module gives
itself, and the `kubectl kubemeter` plugin is the same CLI under kubectl's name."""

from __future__ import annotations

import argparse
import pkgutil

import pytest

from kubemeter_operator import cli, commands


def command_modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_table_names_every_command_module_and_nothing_else() -> None:
    assert set(cli.COMMANDS) == command_modules()
    assert list(cli.COMMANDS) == sorted(cli.COMMANDS), "kubemeter --help lists them sorted"


def test_the_table_help_is_what_each_module_registers() -> None:
    registered = {a.dest: a.help for a in subparsers(cli.build_parser())._choices_actions}
    assert registered == cli.COMMANDS


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_registers_a_runnable_parser(name: str) -> None:
    parser = subparsers(cli.build_parser([name])).choices[name]
    assert parser.get_default("run") is not None or any(
        isinstance(a, argparse._SubParsersAction) for a in parser._actions
    ), f"{name}: no run() default and no actions"


def test_help_lists_every_command_without_loading_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kubemeter ")
    for name, help_ in cli.COMMANDS.items():
        assert name in out
        assert help_.split()[0] in out


def test_the_plugin_is_the_same_cli_named_for_kubectl(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.plugin_main(["top", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: kubectl kubemeter top ")
    for flag in ("-o", "--kubeconfig", "--context"):
        assert flag in out


def test_the_chosen_command_is_the_first_word_that_is_not_an_option() -> None:
    assert cli.chosen_command(["quote", "--plan", "p.yaml"]) == "quote"
    assert cli.chosen_command(["-h", "why", "acme"]) == "why"
    assert cli.chosen_command(["--help"]) is None
    assert cli.chosen_command(["nonsense"]) is None


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nonsense"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
