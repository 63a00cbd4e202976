"""Subcommands of the `kubemeter` CLI, one module each (see `kubemeter_operator.cli`)."""
