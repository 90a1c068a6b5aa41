"""Counter-based synthetic tensors: every element is a pure function of (seed, tensor name, index).

A rank generates only its own shard, and every element has the same value whatever the rank
count, so sharded runs and the single-rank reference see identical weights and caches without
the whole model ever existing on one rank. The counter hash is SplitMix64 (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014) applied to key + flat index
(the compiled loops: kernels/jit/fill.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .kernels.compiled import kernel


def tensor_key(seed: int, name: str) -> np.uint64:
    """64-bit key of one named tensor under one seed."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def rows(seed: int, name: str, row_starts: np.ndarray, row_length: int, scale: float = 1.0,
         offset: float = 0.0, bf16: bool = False) -> np.ndarray:
    """[R, row_length]: element c of row r has flat index row_starts[r] + c. float32, or with
    `bf16` rounded to bf16 (uint16) one row at a time."""
    out = np.empty((len(row_starts), row_length), dtype=np.uint16 if bf16 else np.float32)
    _fill(tensor_key(seed, name), row_starts, out, scale, offset, bf16)
    return out


def _fill(key: np.uint64, row_starts, out: np.ndarray, scale: float, offset: float, bf16: bool) -> None:
    """out [R, M] (C-contiguous) <- element c of row r at flat index row_starts[r] + c, through
    the compiled loops (kernels/jit/fill.py); bf16 through one float32 row of scratch [M] (no
    float32 copy of the tensor)."""
    starts = np.ascontiguousarray(row_starts, dtype=np.int64)
    if bf16:
        kernel("fill_rows_bf16")(key, starts, out, np.empty(out.shape[1], np.float32), float(scale), float(offset))
    else:
        kernel("fill_rows")(key, starts, out, float(scale), float(offset))


@dataclass(frozen=True)
class BlockSpec:
    """Block [r0:r1, c0:c1] of a virtual [R, C] synthetic matrix: everything that fixes its values,
    so two equal specs are the same block bit for bit whoever generates it."""

    seed: int
    name: str  # the tensor's name (its key with the seed)
    shape: tuple[int, int]  # (R, C) of the whole virtual matrix
    row_range: tuple[int, int]  # (r0, r1), half-open
    col_range: tuple[int, int]  # (c0, c1), half-open
    scale: float = 1.0
    offset: float = 0.0
    bf16: bool = False  # stored as bf16 bits (uint16), else float32

    @property
    def block_shape(self) -> tuple[int, int]:
        """(r1 - r0, c1 - c0)."""
        (r0, r1), (c0, c1) = self.row_range, self.col_range
        return r1 - r0, c1 - c0

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.bf16 else np.float32)

    @property
    def nbytes(self) -> int:
        rows, cols = self.block_shape
        return rows * cols * self.dtype.itemsize


def fill_block_rows(spec: BlockSpec, out: np.ndarray, rows: range) -> None:
    """out [len(rows), c1 - c0] (C-contiguous, spec.dtype) <- rows `rows` of the block (counted
    from its first row): the values `generate_block(spec)[rows]` would hold."""
    (r0, _), (c0, _) = spec.row_range, spec.col_range
    starts = (r0 + np.arange(rows.start, rows.stop, dtype=np.int64)) * spec.shape[1] + c0
    _fill(tensor_key(spec.seed, spec.name), starts, out, spec.scale, spec.offset, spec.bf16)


def generate_block(spec: BlockSpec) -> np.ndarray:
    """The block [r1 - r0, c1 - c0], float32 (or bf16 storage), in fresh memory."""
    out = np.empty(spec.block_shape, dtype=spec.dtype)
    fill_block_rows(spec, out, range(spec.block_shape[0]))
    return out


def matrix_block(seed: int, name: str, shape: tuple[int, int], row_range: tuple[int, int],
                 col_range: tuple[int, int], scale: float = 1.0, offset: float = 0.0,
                 bf16: bool = False) -> np.ndarray:
    """Block [r0:r1, c0:c1] of a virtual [R, C] matrix, float32 (or bf16 storage)."""
    return generate_block(BlockSpec(seed, name, shape, row_range, col_range, scale, offset, bf16))


def vector_spec(seed: int, name: str, length: int, scale: float = 1.0, offset: float = 0.0) -> BlockSpec:
    """A vector [length] as the one-row block of a virtual [1, length] matrix (float32)."""
    return BlockSpec(seed, name, (1, length), (0, 1), (0, length), scale, offset)


def vector(seed: int, name: str, length: int, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return generate_block(vector_spec(seed, name, length, scale, offset))[0]
