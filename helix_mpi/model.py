"""Llama-style decoder layer math on whatever weight slices it is given (no knowledge of ranks).

Equations (x @ W convention, one decode token per request, shapes for the slices given):
  h = RMSNorm(x) * attn_norm                          x [B, H]
  q = RoPE(h @ wq), k = RoPE(h @ wk), v = h @ wv      q [B, Qh, D], k, v [B, Kh, D]
  o_i, lse_i = partial attention over a KV shard      (flash decoding, paper section 1 step 3)
  o = combine_i(o_i, lse_i)                           exact LSE combine (step 5)
  x = x + o @ wo                                      the sum over ranks is an all-reduce (step 6)
  x = x + (silu(g @ w_gate) * (g @ w_up)) @ w_down,   g = RMSNorm(x) * ffn_norm
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .kernels import apply_rope, linear, rms_norm, swiglu
from .sharding import DenseLayerWeights


def project_qkv(x: np.ndarray, w: DenseLayerWeights, positions: np.ndarray,
                model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [B, H] -> q [B, Qh, D], k [B, Kh, D] (both after RoPE at global positions [B]), v [B, Kh, D]."""
    batch, head_dim = x.shape[0], model.head_dim
    h = rms_norm(x, w.attn_norm, model.norm_eps)
    q = linear(h, w.wq).reshape(batch, -1, head_dim)
    k = linear(h, w.wk).reshape(batch, -1, head_dim)
    v = linear(h, w.wv).reshape(batch, -1, head_dim)
    return apply_rope(q, positions, model.rope_theta), apply_rope(k, positions, model.rope_theta), v


def project_output(attention: np.ndarray, w: DenseLayerWeights) -> np.ndarray:
    """attention [B, n, D] of the heads whose wo rows are held -> partial sum [B, H]."""
    return linear(np.ascontiguousarray(attention.reshape(attention.shape[0], -1)), w.wo)


def feed_forward(x: np.ndarray, w: DenseLayerWeights, model: ModelConfig) -> np.ndarray:
    """x [B, H] -> partial sum [B, H] of the FFN columns held."""
    g = rms_norm(x, w.ffn_norm, model.norm_eps)
    return linear(swiglu(g, w.w_gate, w.w_up), w.w_down)


def next_step_input(x: np.ndarray, model: ModelConfig) -> np.ndarray:
    """Input of layer 0 at step t+1: RMSNorm (unit weight) of the last layer's output at step t."""
    return rms_norm(x, None, model.norm_eps)
