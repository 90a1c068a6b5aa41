"""Sweep and Pareto commands, registered on the `helix-mpi` group by cli.py."""
from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's commands to the group."""
