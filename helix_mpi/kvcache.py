"""KV cache sharded along the sequence over a KVP group, placed by round robin over blocks.

Token at global position p lives on KVP rank (p // tokens_per_block) % KVP (docs/design.md section 1,
step 2). The initial context of S tokens is placed exactly as S decode-step appends would have
placed it, so the cache of every rank grows evenly and differs by at most one block.
"""
from __future__ import annotations

import numpy as np

from . import synth
from .kernels import from_bf16, to_bf16


def kvp_owner(positions: np.ndarray | int, tokens_per_block: int, kvp: int) -> np.ndarray | int:
    """KVP rank holding each global token position."""
    return (np.asarray(positions) // tokens_per_block) % kvp


def owned_positions(end: int, kvp_rank: int, kvp: int, tokens_per_block: int, start: int = 0) -> np.ndarray:
    """Sorted global positions in [start, end) held by `kvp_rank` [n] int64."""
    positions = np.arange(start, end, dtype=np.int64)
    return positions[kvp_owner(positions, tokens_per_block, kvp) == kvp_rank]


def tokens_held(end: int, kvp: int, tokens_per_block: int) -> np.ndarray:
    """Tokens in [0, end) held by each KVP rank [KVP] (closed form, no arrays of size end)."""
    full_rounds, remainder = divmod(end, tokens_per_block * kvp)
    held = np.full(kvp, full_rounds * tokens_per_block, dtype=np.int64)
    full_blocks, partial = divmod(remainder, tokens_per_block)
    held[:full_blocks] += tokens_per_block
    if full_blocks < kvp:
        held[full_blocks] += partial
    return held


def initial_kv(seed: int, layer: int, requests: range, num_kv_heads: int, context: int, head_dim: int,
               kv_heads: range, positions: np.ndarray, key_scale: float = 1.0,
               with_values: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Initial (post-RoPE) keys and values of the given requests, KV heads and positions,
    [b, Kh, n, D] each (values None for MLA, whose latent cache is its own value).

    Element [b, h, s, d] of the virtual full cache [B, K, S, D] is a pure function of its index.
    """
    b = np.asarray(requests, dtype=np.int64)[:, None, None]
    h = np.asarray(kv_heads, dtype=np.int64)[None, :, None]
    s = np.asarray(positions, dtype=np.int64)[None, None, :]
    starts = (((b * num_kv_heads + h) * context + s) * head_dim).reshape(-1)
    shape = (len(requests), len(kv_heads), len(positions), head_dim)
    unit = np.sqrt(3.0)  # uniform [-1, 1) scaled to unit variance
    k = synth.rows(seed, f"layer{layer}.k_init", starts, head_dim, unit * key_scale).reshape(shape)
    v = synth.rows(seed, f"layer{layer}.v_init", starts, head_dim, unit).reshape(shape) if with_values else None
    return k, v


def storage_dtype(storage: str) -> type:
    return np.uint16 if storage == "bf16" else np.float32


def to_storage(values: np.ndarray, dtype: type) -> np.ndarray:
    """float32 values as kept in a cache of `dtype` (bf16 rounds to nearest even)."""
    return to_bf16(values) if dtype is np.uint16 else values


def round_to_storage(values: np.ndarray, storage: str) -> np.ndarray:
    """The float values a cache of `storage` would hand back (the reference's view)."""
    return values if storage == "fp32" else from_bf16(to_bf16(np.asarray(values, dtype=np.float32)))


class ShardedKVCache:
    """One layer's KV shard on one rank: k, v [B, Kh, capacity, D] (v None for an MLA latent cache,
    k [B, 1, capacity, L+R]) and valid lengths [B]."""

    def __init__(self, k_init: np.ndarray, v_init: np.ndarray | None, capacity: int, dtype: type = np.float32):
        batch, heads, held, head_dim = k_init.shape
        self.dtype = dtype
        self.k = np.zeros((batch, heads, capacity, head_dim), dtype=dtype)
        self.k[:, :, :held] = to_storage(k_init, dtype)
        self.v = None
        if v_init is not None:
            self.v = np.zeros_like(self.k)
            self.v[:, :, :held] = to_storage(v_init, dtype)
        self.lengths = np.full(batch, held, dtype=np.int64)

    def append(self, k_new: np.ndarray, v_new: np.ndarray | None) -> None:
        """Store one new token per request: k_new, v_new [B, Kh, D]."""
        slot = self.lengths  # [B]
        k_new = to_storage(np.ascontiguousarray(k_new), self.dtype)
        v_new = None if self.v is None else to_storage(np.ascontiguousarray(v_new), self.dtype)
        for b in range(len(slot)):
            self.k[b, :, slot[b]] = k_new[b]
            if self.v is not None:
                self.v[b, :, slot[b]] = v_new[b]
        self.lengths = slot + 1
