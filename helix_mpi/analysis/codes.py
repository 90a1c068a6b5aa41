"""String columns of event rows as small integer codes, and the array helpers the running sums use.

Event tables hold op, stream, collective and group names as fixed-width bytes; summing per op
needs one integer per distinct name tuple, found fast and exactly (`Vocabulary`).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.recfunctions import repack_fields


def _as_words(rows: np.ndarray, fields: tuple[str, ...]) -> np.ndarray:
    """The bytes of some fields of structured rows [n] as uint64 words [n, w] (one packed copy)."""
    packed = repack_fields(rows[list(fields)])
    width = packed.dtype.itemsize
    raw = packed.view(np.uint8).reshape(len(rows), width)
    if width % 8:
        raw = np.concatenate([raw, np.zeros((len(rows), 8 - width % 8), dtype=np.uint8)], axis=1)
    return raw.view("<u8")


_HASH_BASE = 0x9E3779B97F4A7C15  # odd 64-bit constant (2**64 / golden ratio)


def _unique_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row index of each distinct row, inverse [n]) of a uint64 matrix [n, w]; exact.

    A polynomial hash (sum of word_j * base**j modulo 2**64, one integer matmul) makes one
    sortable uint64 per row, much faster than sorting byte strings. Every row is then compared
    word by word with its group's first row; on a hash collision an exact row-wise unique runs."""
    powers = np.array([pow(_HASH_BASE, j, 1 << 64) for j in range(words.shape[1])], dtype=np.uint64)
    _, first, inverse = np.unique(words @ powers, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    representative = words[first]
    if not all(np.array_equal(representative[:, j][inverse], words[:, j]) for j in range(words.shape[1])):
        _, first, inverse = np.unique(words, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


class Vocabulary:
    """Global integer codes of distinct tuples of bytes fields, stable across chunks."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields, self.keys, self.codes = fields, [], {}

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        """Code [n] of every row of the chunk."""
        first, inverse = _unique_rows(_as_words(chunk, self.fields))
        lookup = np.array([self._code(tuple(chunk[f][i].decode() for f in self.fields)) for i in first],
                          dtype=np.int64)
        return lookup[inverse]

    def _code(self, key: tuple[str, ...]) -> int:
        if key not in self.codes:
            self.codes[key] = len(self.keys)
            self.keys.append(key)
        return self.codes[key]


def grow(array: np.ndarray, length: int, fill: float = 0.0) -> np.ndarray:
    """`array` extended along axis 0 to at least `length` rows with `fill`."""
    if len(array) >= length:
        return array
    extra = np.full((length - len(array),) + array.shape[1:], fill, dtype=array.dtype)
    return np.concatenate([array, extra])


def sum_by(codes: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of `weights` (or count) per code [size], as floats."""
    return np.bincount(codes, weights=weights, minlength=size).astype(float)
