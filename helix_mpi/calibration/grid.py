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
        """(seconds, inside) at the coordinates (arrays broadcast); seconds are NaN where not inside.
        When only one coordinate varies (the sweep's batches, serving's KV lengths) the grid is
        first cut along that axis at the fixed ones (cached), then interpolated in one dimension:
        the same multilinear interpolation, much faster."""
        coords = tuple(_constant(c) for c in coords)
        varying = [d for d, c in enumerate(coords) if np.ndim(c) > 0]
        if len(varying) <= 1 and len(coords) > 1:
            axis = varying[0] if varying else len(coords) - 1
            fixed = tuple(float(c) if d != axis else None for d, c in enumerate(coords))
            return self._along(axis, fixed)(np.asarray(coords[axis], dtype=float))
        return self._interpolate(*coords)

    def _along(self, axis: int, fixed: tuple):
        key = (axis, fixed)
        curve = self._curves.get(key) if hasattr(self, "_curves") else None
        if curve is None:
            if not hasattr(self, "_curves"):
                self._curves = {}
            points = np.exp(self.axes[axis])
            coords = [points if d == axis else np.full(len(points), value) for d, value in enumerate(fixed)]
            seconds, inside = self._interpolate(*coords)
            curve = self._curves[key] = _Curve(self.axes[axis], np.log(np.where(inside, seconds, 1.0)), inside)
        return curve

    def _interpolate(self, *coords) -> tuple[np.ndarray, np.ndarray]:
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


def _constant(coord):
    """A coordinate array holding one value, as that scalar (so the cheap one-axis cut applies)."""
    if np.ndim(coord) == 0 or np.size(coord) == 0:
        return coord
    array = np.asarray(coord, dtype=float)
    first = array.flat[0]
    return first if np.all(array == first) else array


class _Curve:
    """A grid cut along one axis: log seconds at that axis's points, and which are measured."""

    def __init__(self, log_x: np.ndarray, log_y: np.ndarray, measured: np.ndarray):
        self.log_x, self.log_y, self.measured = log_x, log_y, measured

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positive = x > 0
        lx = np.log(np.where(positive, x, 1.0))
        if len(self.log_x) == 1:
            inside = positive & self.measured[0] & np.isclose(lx, self.log_x[0], rtol=0, atol=1e-9)
            return np.where(inside, np.exp(self.log_y[0]), np.nan), inside
        lower = np.clip(np.searchsorted(self.log_x, lx, side="right") - 1, 0, len(self.log_x) - 2)
        weight = np.clip((lx - self.log_x[lower]) / (self.log_x[lower + 1] - self.log_x[lower]), 0.0, 1.0)
        inside = positive & (lx >= self.log_x[0] - 1e-12) & (lx <= self.log_x[-1] + 1e-12)
        inside &= (self.measured[lower] | (weight == 1.0)) & (self.measured[lower + 1] | (weight == 0.0))
        value = (1.0 - weight) * self.log_y[lower] + weight * self.log_y[lower + 1]
        return np.where(inside, np.exp(value), np.nan), inside
