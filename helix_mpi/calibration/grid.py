"""Measured latencies on a grid of shape axes, interpolated in log space.

A table maps shape coordinates (e.g. m, n, k of a GEMM) to a measured latency. Inside the
measured range, a latency is the multilinear interpolation of log(latency) in log(coordinate)
between the 2^d surrounding grid points (exact on grid points; GEMM, attention and collective
latencies are close to power laws between neighbouring points). A point outside the range, or
whose surrounding cells are not all measured, is reported as such, and the caller uses its
fitted physical model there: never a silent clamp.
"""
from __future__ import annotations

import numpy as np


class Grid:
    """latency_s = f(coordinates) on the grid `axes` (each sorted, > 0); `seconds` [len(axis) ...]
    with NaN where a cell was not measured."""

    def __init__(self, axes: list, seconds: np.ndarray):
        self.axes = [np.log(np.asarray(a, dtype=float)) for a in axes]
        self.log_seconds = np.log(np.asarray(seconds, dtype=float))
        if self.log_seconds.shape != tuple(len(a) for a in self.axes):
            raise ValueError(f"grid values {self.log_seconds.shape} do not match axes {[len(a) for a in self.axes]}")

    @property
    def points(self) -> int:
        return int(np.isfinite(self.log_seconds).sum())

    def _axis(self, axis: np.ndarray, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower index, weight of the upper neighbour, inside) of coordinates on one axis."""
        positive = coord > 0
        x = np.log(np.where(positive, coord, 1.0))
        if len(axis) == 1:  # a single measured value: only that value is inside
            inside = positive & np.isclose(x, axis[0], rtol=0, atol=1e-9)
            return np.zeros(x.shape, dtype=np.int64), np.zeros(x.shape), inside
        lower = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, len(axis) - 2)
        weight = (x - axis[lower]) / (axis[lower + 1] - axis[lower])
        inside = positive & (x >= axis[0] - 1e-12) & (x <= axis[-1] + 1e-12)
        return lower, np.clip(weight, 0.0, 1.0), inside

    def __call__(self, *coords) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, inside) at the coordinates (arrays broadcast); seconds are NaN where not inside."""
        coords = np.broadcast_arrays(*[np.asarray(c, dtype=float) for c in coords])
        parts = [self._axis(axis, c) for axis, c in zip(self.axes, coords)]
        inside = np.logical_and.reduce([p[2] for p in parts])
        total = np.zeros(coords[0].shape)
        for corner in range(1 << len(parts)):
            index, weight = [], np.ones(coords[0].shape)
            for d, (lower, w, _) in enumerate(parts):
                upper = (corner >> d) & 1
                index.append(lower + upper)
                weight = weight * (w if upper else 1.0 - w)
            value = self.log_seconds[tuple(index)]
            used = weight > 0
            inside &= ~(used & ~np.isfinite(value))
            total = total + np.where(used, weight * np.where(np.isfinite(value), value, 0.0), 0.0)
        return np.where(inside, np.exp(total), np.nan), inside
