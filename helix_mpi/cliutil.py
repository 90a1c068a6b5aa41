"""What every `helix-mpi` command module shares: exit codes, the one-line error types, which
library errors count as bad input, and printing a result as text or JSON.

cli.py and the command modules it registers (tracecli, sweepcli, advisecli, calibcli) import
this module; it imports none of them, so the CLI has no import cycle."""
from __future__ import annotations

import json
from typing import Any

import click

EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3  # the modeled configuration does not fit in the GPUs' memory (--allow-overflow: 0)


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"helix-mpi: error: {self.message}", err=True)


class DoesNotFitError(click.ClickException):
    """The modeled configuration does not fit in HBM: one line, exit code 3."""

    exit_code = EXIT_DOES_NOT_FIT

    def show(self, file: Any = None) -> None:
        click.echo(f"helix-mpi: {self.message}", err=True)


def user_error_types() -> tuple[type[Exception], ...]:
    """The library's exceptions that mean bad input (shown as one UserError line)."""
    from .config import ConfigError
    from .outputs import OutputError
    from .serving import ServingError
    from .topology import TopologyError
    from .trace import TraceError
    from .workload import WorkloadError

    return (ConfigError, TopologyError, TraceError, WorkloadError, ServingError, OutputError)


def emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    """Print `data` as one JSON line, or `text`."""
    click.echo(json.dumps(data, indent=None, default=float) if as_json else text)
