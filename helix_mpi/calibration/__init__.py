"""Measured tables of GPU systems and the physical models fitted to them (see grid, tables, fits)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .fits import Fit, SystemFits
from .grid import Grid
from .tables import SystemTables, TableError


@dataclass(frozen=True)
class SystemCalibration:
    """One GPU system's measured tables and the physics fitted to them (fits computed on first use)."""

    directory: Path
    tables: SystemTables
    fits: SystemFits

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def load(directory: Path) -> "SystemCalibration":
        tables = SystemTables(directory)
        return SystemCalibration(directory, tables, SystemFits(tables))


__all__ = ["Fit", "SystemFits", "Grid", "SystemTables", "TableError", "SystemCalibration"]
