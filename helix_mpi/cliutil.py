"""What every `helix-mpi` command module shares: exit codes, the one-line error types, which
library errors count as bad input, and printing a result as text or JSON.

cli.py and the command modules it registers (tracecli, sweepcli, advisecli, calibcli) import
this module; it imports none of them, so the CLI has no import cycle."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

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
    from .kernels.compiled import KernelBackendError
    from .outputs import OutputError
    from .serving import ServingError
    from .topology import TopologyError
    from .trace import TraceError
    from .workload import WorkloadError

    return (ConfigError, TopologyError, TraceError, WorkloadError, ServingError, OutputError, KernelBackendError)


@contextmanager
def one_line_errors(*extra: type[Exception], writes: bool = False) -> Iterator[None]:
    """Bad input inside the block (the library's user errors and the `extra` types) becomes a
    UserError; with `writes`, so does an OSError (an output that cannot be written)."""
    try:
        yield
    except (*user_error_types(), *extra) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        if not writes:
            raise
        raise UserError(cannot_write_text(exc)) from None


def cannot_write_text(exc: OSError) -> str:
    """'cannot write NAME: reason' for an OSError (NAME without the writer's `.partial` suffix)."""
    name = str(getattr(exc, "filename", None) or "").removesuffix(".partial")
    return f"cannot write {name}: {exc.strerror}" if name else str(exc)


def emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    """Print `data` as one JSON line, or `text`."""
    click.echo(json.dumps(data, indent=None, default=float) if as_json else text)
