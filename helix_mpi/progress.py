"""Progress on stderr: a live bar on a terminal, timestamped lines through a pipe or a log.

Under `helix-mpi run -n N` and `mpiexec`, the ranks' stderr is a pipe to mpiexec even when the user
sits at a terminal; the launcher says so with HELIX_MPI_TTY=1 (it saw a terminal), and rank 0 then
draws the live bar, which mpiexec forwards unchanged. Otherwise rank 0 prints lines such as

    helix-mpi: decode steps 3/8 (38%), 2.4/s, ETA 2.1 s

at most every HELIX_MPI_PROGRESS_S seconds (default 5; 0: every update), always the first and the
last. Start-up phases (starting ranks, building weights, compiling kernels) are one line each.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

import click

TTY_ENV = "HELIX_MPI_TTY"  # set to 1 by the launcher when its stderr is a terminal
INTERVAL_ENV = "HELIX_MPI_PROGRESS_S"
DEFAULT_INTERVAL_S = 5.0


def stderr_is_terminal(stream: TextIO | None = None) -> bool:
    """A terminal here, or (for ranks started by the launcher) at the user's end."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return os.environ.get(TTY_ENV) == "1"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class _TerminalFile:
    """The stream, said to be a terminal (click draws its bar only on one)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Progress:
    """`update(done)` with the units done so far (absolute) or `advance(k)`; `phase(text)` for the
    start-up steps. Disabled: every call does nothing. Use as a context manager."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO | None = None,
                 bar: bool | None = None, unit: str = ""):
        self.total, self.label, self.enabled, self.unit = max(int(total), 0), label, enabled, unit
        self.stream = sys.stderr if stream is None else stream
        self.bar_mode = stderr_is_terminal(self.stream) if bar is None else bar
        self.interval = _interval()
        self.done = self._done0 = 0
        self._bar = None
        self._start = self._last = None

    # --- start-up phases --------------------------------------------------------------------
    def phase(self, text: str) -> None:
        """One line: what is happening now (before the counted work starts)."""
        if self.enabled:
            click.echo(f"helix-mpi: {text}", file=self.stream)
            self.stream.flush()

    # --- counted work ------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif self.enabled and self._start is not None and self.done < self.total and exc[0] is None:
            self._line(force=True)

    def _begin(self) -> None:
        self._start = self._last = time.monotonic()
        if self.bar_mode:
            self._bar = click.progressbar(length=self.total, label=self.label, file=_TerminalFile(self.stream))
            self._bar.__enter__()

    def advance(self, k: int = 1) -> None:
        self.update(self.done + k)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        first = self._start is None
        previous, self.done = self.done, min(int(done), self.total) if self.total else int(done)
        if first:
            self._begin()
            self._done0 = previous if self._bar is not None else self.done
        if self._bar is not None:
            self._bar.update(self.done - previous)
            return
        now = time.monotonic()
        if first or self.done >= self.total or now - self._last >= self.interval:
            self._line()
            self._last = now

    def _line(self, force: bool = False) -> None:
        elapsed = time.monotonic() - self._start
        counted = self.done - self._done0  # units done since the first update (its time is unknown)
        rate = counted / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"helix-mpi: {self.label} {self.done:,}/{self.total:,}{share}"
        if counted > 0 and elapsed > 0:
            text += f", {rate:.3g}{(' ' + self.unit) if self.unit else ''}/s"
            if self.done < self.total:
                text += f", ETA {_duration((self.total - self.done) / rate)}"
            else:
                text += f", done in {_duration(elapsed)}"
        click.echo(text, file=self.stream)
        self.stream.flush()

    # --- adapters for callbacks ------------------------------------------------------------
    @property
    def absolute(self) -> Callable[[int], None] | None:
        """A callback taking the units done so far (None when disabled)."""
        return self.update if self.enabled else None

    @property
    def per_call(self) -> Callable[..., None] | None:
        """A callback advancing one unit per call, whatever its arguments (None when disabled)."""
        return (lambda *args: self.advance(1)) if self.enabled else None

    @property
    def by_count(self) -> Callable[[int], None] | None:
        """A callback advancing by its argument (None when disabled)."""
        return self.advance if self.enabled else None
