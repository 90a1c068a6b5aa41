"""Decoder layer math on whatever weight slices it is given (no knowledge of ranks).

GQA layer (x @ W convention, one decode token per request, shapes of the slices given):
  h = RMSNorm(x) * attn_norm                          x [B, H]
  q = RoPE(h @ wq), k = RoPE(h @ wk), v = h @ wv      q [B, Qh, D], k, v [B, Kh, D]
  o_i, lse_i = partial attention over a KV shard      (flash decoding, paper section 1 step 3)
  o = combine_i(o_i, lse_i)                           exact LSE combine (step 5)
  x = x + o @ wo                                      the sum over ranks is an all-reduce (step 6)
MLA layer, absorbed decode form (DeepSeek-V2 section 2.1; cache = [c_kv | k_pe] per token):
  c_q = RMSNorm(h @ wq_a) * q_a_norm; [q_nope | q_pe] = c_q @ wq_b; q_pe = RoPE(q_pe)
  q_lat[h] = q_nope[h] @ W_UK[h]                      [B, Qh, L]: q projected into latent space
  kv = h @ wkv_a; c_kv = RMSNorm(kv[:L]) * kv_a_norm; k_pe = RoPE(kv[L:])
  score = (q_lat . c_kv + q_pe . k_pe) / sqrt(nope + rope); o_lat = softmax . c_kv   [B, Qh, L]
  x = x + concat_h(o_lat[h] @ W_UV[h]) @ wo
FFN: x = x + SwiGLU(g) (dense) or x = x + sum_topk w_e SwiGLU_e(g) + SwiGLU_shared(g) (MoE),
  g = RMSNorm(x) * ffn_norm; w from softmax/sigmoid router scores, top-k, renormalised, scaled.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig, MoEConfig
from .kernels import apply_rope, from_bf16, is_bf16, linear, partial_attention, rms_norm, swiglu
from .sharding import DenseFFNWeights, GQAWeights, MLAWeights, MoEWeights, SwiGLUWeights


def as_float32(weights: np.ndarray) -> np.ndarray:
    """Weights for NumPy math: bf16 storage (uint16) upcast, float32 as is."""
    return from_bf16(weights) if is_bf16(weights) else weights


def project_qkv(x: np.ndarray, w: GQAWeights, positions: np.ndarray,
                model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [B, H] -> q [B, Qh, D], k [B, Kh, D] (both after RoPE at global positions [B]), v [B, Kh, D]."""
    batch, head_dim = x.shape[0], model.head_dim
    h = rms_norm(x, w.attn_norm, model.norm_eps)
    q = linear(h, w.wq).reshape(batch, w.wq.shape[1] // head_dim, head_dim)
    k = linear(h, w.wk).reshape(batch, w.wk.shape[1] // head_dim, head_dim)
    v = linear(h, w.wv).reshape(batch, w.wv.shape[1] // head_dim, head_dim)
    return apply_rope(q, positions, model.rope_theta), apply_rope(k, positions, model.rope_theta), v


def mla_project(x: np.ndarray, w: MLAWeights, positions: np.ndarray,
                model: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """x [B, H] -> (query in latent space [B, Qh, L+R], new cache entry [B, L+R]).

    The query is pre-scaled so that the GQA kernel's 1/sqrt(L+R) yields the MLA scale
    1/sqrt(nope + rope) over the concatenated [latent | rope] dims."""
    mla, batch = model.mla, x.shape[0]
    L, R, nope = mla.kv_lora_rank, mla.qk_rope_head_dim, mla.qk_nope_head_dim
    h = rms_norm(x, w.attn_norm, model.norm_eps)
    c_q = rms_norm(linear(h, w.wq_a), w.q_a_norm, model.norm_eps) if w.wq_a is not None else h
    q = linear(c_q, w.wq_b).reshape(batch, w.wq_b.shape[1] // (nope + R), nope + R)
    q_pe = apply_rope(np.ascontiguousarray(q[..., nope:]), positions, model.rope_theta)
    q_latent = np.einsum("bhn,hnl->bhl", q[..., :nope], as_float32(w.w_uk))  # absorbed W_UK [B, Qh, L]
    kv = linear(h, w.wkv_a)  # [B, L+R]
    c_kv = rms_norm(np.ascontiguousarray(kv[:, :L]), w.kv_a_norm, model.norm_eps)
    k_pe = apply_rope(np.ascontiguousarray(kv[:, None, L:]), positions, model.rope_theta)[:, 0]
    scale = math.sqrt(L + R) / math.sqrt(nope + R)
    query = (np.concatenate([q_latent, q_pe], axis=-1) * scale).astype(np.float32)
    return query, np.concatenate([c_kv, k_pe], axis=-1).astype(np.float32)


def mla_partial_attention(query: np.ndarray, cache: np.ndarray, lengths: np.ndarray,
                          latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """query [B, Qh, L+R], cache [B, 1, C, L+R] -> (latent out [B, Qh, L], lse [B, Qh]).

    MLA is one shared KV head whose value is the latent prefix of its key, so the GQA kernel
    runs with k = v = cache (rows read once, from cache lines already loaded)."""
    out, lse = partial_attention(query, cache, cache, lengths)
    return np.ascontiguousarray(out[..., :latent_dim]), lse


def project_output(attention: np.ndarray, w: GQAWeights) -> np.ndarray:
    """attention [B, n, D] of the heads whose wo rows are held -> partial sum [B, H]."""
    return linear(np.ascontiguousarray(attention.reshape(attention.shape[0], w.wo.shape[0])), w.wo)


def mla_output(latent: np.ndarray, w: MLAWeights) -> np.ndarray:
    """latent [B, n, L] -> W_UV per head [B, n, v] -> partial sum [B, H] through wo rows."""
    values = np.einsum("bhl,hlv->bhv", latent, as_float32(w.w_uv)).astype(np.float32)
    return linear(np.ascontiguousarray(values.reshape(values.shape[0], w.wo.shape[0])), w.wo)


def swiglu_mlp(g: np.ndarray, w: SwiGLUWeights) -> np.ndarray:
    return linear(swiglu(g, w.w_gate, w.w_up), w.w_down)


def ffn_input(x: np.ndarray, w: DenseFFNWeights | MoEWeights, model: ModelConfig) -> np.ndarray:
    return rms_norm(x, w.ffn_norm, model.norm_eps)


def feed_forward(x: np.ndarray, w: DenseFFNWeights, model: ModelConfig) -> np.ndarray:
    """x [B, H] -> partial sum [B, H] of the FFN columns held."""
    return swiglu_mlp(ffn_input(x, w, model), w.mlp)


def route(g: np.ndarray, router: np.ndarray, moe: MoEConfig) -> tuple[np.ndarray, np.ndarray]:
    """g [B, H] -> (experts [B, k] int64, weights [B, k] float32), DeepSeek-style top-k."""
    logits = linear(g, router).astype(np.float64)  # [B, E]
    if moe.scoring == "softmax":
        scores = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    experts = np.argsort(-scores, axis=-1, kind="stable")[:, : moe.experts_per_token]
    weights = np.take_along_axis(scores, experts, axis=-1)
    if moe.normalize_topk:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return experts, (weights * moe.routed_scaling).astype(np.float32)


def moe_forward(g: np.ndarray, w: MoEWeights, experts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Partial sum [B, H] of the held experts (their column shards) and the shared-expert shard."""
    out = swiglu_mlp(g, w.shared) if w.shared is not None else np.zeros_like(g)
    for expert, mlp in w.experts.items():
        tokens, slot = np.nonzero(experts == expert)
        if len(tokens):
            out[tokens] += weights[tokens, slot][:, None] * swiglu_mlp(np.ascontiguousarray(g[tokens]), mlp)
    return out


def next_step_input(x: np.ndarray, model: ModelConfig) -> np.ndarray:
    """Input of layer 0 at step t+1: RMSNorm (unit weight) of the last layer's output at step t."""
    return rms_norm(x, None, model.norm_eps)
