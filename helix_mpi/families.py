"""Attention families (GQA, MLA): one object each, owning what differs between them.

- KV geometry: what one token stores per layer (`cache_heads` x `cache_width`, values or not);
- the partial width the KVP all-to-all carries per head (`partial_width`: D, or the latent L);
- weight counts of the projections (`qkv_weight_elements`, `out_weight_elements`);
- the attention op's GPU kernels (`projection_kernels`, `attention_kernel`, `output_kernels`);
- the math hooks the emulator and the reference call (`weights`, `project`, `partial_attention`,
  `output`, `reference_attention`).

`family(model)` is the one place that asks which family a model has; a new family (say, sliding
window or linear attention) is a new subclass here plus its math in model.py / reference.py.
"""
from __future__ import annotations

import numpy as np

from .config import Implementation, ModelConfig
from .gpuops import ACTIVATION_BYTES, Attention, Elementwise, Gemm, MlaAttention


def weight_gemm(m, n, k, dtype: str, impl: Implementation) -> Gemm:
    """A weight GEMM at `dtype`; its FP8/FP4 input is quantised by its producer under TensorRT-LLM."""
    return Gemm(m, n, k, dtype, fused_quant=impl.fused_norm and dtype != "bf16")


class AttentionFamily:
    name: str
    with_values: bool  # the cache holds values besides keys
    cache_key: str  # name of the cached keys in saved tensors

    def cache_heads(self, model: ModelConfig) -> int:
        """KV heads of the whole model's cache."""
        raise NotImplementedError

    def cache_width(self, model: ModelConfig) -> int:
        """Elements of one cached head vector."""
        raise NotImplementedError

    def elements_per_token(self, model: ModelConfig, shard) -> int:
        """Cached elements per token per layer on a rank holding `shard`."""
        raise NotImplementedError

    def partial_width(self, model: ModelConfig) -> int:
        """Per-head width of an exchanged partial attention output."""
        raise NotImplementedError


class GQA(AttentionFamily):
    """Grouped-query attention: Q heads over K KV heads of size D; the cache holds K and V."""

    name, with_values, cache_key = "GQA", True, "k"

    def cache_heads(self, model):
        return model.num_kv_heads

    def cache_width(self, model):
        return model.head_dim

    def elements_per_token(self, model, shard):
        return 2 * len(shard.kv_heads) * model.head_dim

    def partial_width(self, model):
        return model.head_dim

    def describe(self, model) -> tuple[dict, str]:
        kind = "MHA" if model.num_heads == model.num_kv_heads else "GQA"
        facts = {"type": kind, "heads": model.num_heads, "kv_heads": model.num_kv_heads, "head_dim": model.head_dim}
        return facts, f"{kind}, {model.num_heads} Q / {model.num_kv_heads} KV heads of {model.head_dim}"

    # --- weights and kernels ------------------------------------------------------------------------
    def qkv_weight_elements(self, model, shard):
        """W_Q/W_K/W_V columns of the rank's heads."""
        return model.hidden_size * (len(shard.q_heads) + 2 * len(shard.kv_heads)) * model.head_dim

    def out_weight_elements(self, model, shard):
        """W_O rows of the heads the rank combines."""
        return len(shard.combine_heads) * model.head_dim * model.hidden_size

    def projection_kernels(self, model, shard, batch, wdt, impl) -> list:
        """One fused W_Q|W_K|W_V GEMM."""
        width = (len(shard.q_heads) + 2 * len(shard.kv_heads)) * model.head_dim
        return [weight_gemm(batch, width, model.hidden_size, wdt, impl)]

    def attention_kernel(self, model, shard, batch, tokens, impl):
        return Attention(batch, len(shard.q_heads), len(shard.kv_heads), model.head_dim, tokens, impl.kv_precision)

    def output_kernels(self, model, shard, batch, wdt, impl) -> list:
        """The W_O rows of the combined heads."""
        return [weight_gemm(batch, model.hidden_size, len(shard.combine_heads) * model.head_dim, wdt, impl)]

    # --- math hooks ---------------------------------------------------------------------------------
    def weights(self, model, seed, layer, shard, storage, blocks):
        from .sharding import gqa_weights

        return gqa_weights(model, seed, layer, shard, storage, blocks)

    def weights_class(self):
        from .sharding import GQAWeights

        return GQAWeights

    def project(self, x, w, positions, model):
        """x [B, H] -> (q [B, Qh, D], k [B, Kh, D], v [B, Kh, D]), q and k after RoPE."""
        from .model import project_qkv

        return project_qkv(x, w, positions, model)

    def partial_attention(self, q, k, v, lengths, model):
        """q [b, Qh, D], k, v [b, Kh, C, D] -> (out [b, Qh, D], lse [b, Qh])."""
        from .kernels import partial_attention

        return partial_attention(q, k, v, lengths)

    def output(self, combined, w):
        """combined [B, n, D] -> partial sum [B, H] through the held W_O rows."""
        from .model import project_output

        return project_output(combined, w)

    def reference_attention(self, x, w, k_cache, v_cache, position, model, storage):
        from .reference import gqa_attention

        return gqa_attention(x, w, k_cache, v_cache, position, model, storage)


class MLA(AttentionFamily):
    """Multi-head latent attention, absorbed decode: one shared latent head [c_kv | k_pe] of L+R
    per token, no values (the value is the latent prefix); partials are latent, width L."""

    name, with_values, cache_key = "MLA", False, "latent"

    def cache_heads(self, model):
        return 1

    def cache_width(self, model):
        return model.mla.cache_dim

    def elements_per_token(self, model, shard):
        return model.mla.cache_dim

    def partial_width(self, model):
        return model.mla.kv_lora_rank

    def describe(self, model) -> tuple[dict, str]:
        m = model.mla
        facts = {"type": "MLA", "heads": model.num_heads, "kv_lora_rank": m.kv_lora_rank, "rope_dim": m.qk_rope_head_dim}
        return facts, f"MLA, {model.num_heads} heads, latent {m.kv_lora_rank}+{m.qk_rope_head_dim}"

    # --- weights and kernels ------------------------------------------------------------------------
    def qkv_weight_elements(self, model, shard):
        """Down-projections (replicated), W_q_b columns of the rank's heads and their W_UK."""
        H, q_heads, m = model.hidden_size, len(shard.q_heads), model.mla
        q_in = m.q_lora_rank or H
        return (H * m.q_lora_rank + q_in * q_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)
                + H * m.cache_dim + q_heads * m.qk_nope_head_dim * m.kv_lora_rank)

    def out_weight_elements(self, model, shard):
        """W_UV and W_O rows of the heads the rank combines."""
        n, m = len(shard.combine_heads), model.mla
        return n * m.kv_lora_rank * m.v_head_dim + n * m.v_head_dim * model.hidden_size

    def projection_kernels(self, model, shard, batch, wdt, impl) -> list:
        """The fused down-projections [q_a | kv_a], their norms, W_q_b, and W_UK applied per head
        (a batched GEMM, timed as one GEMM with the same FLOPs and bytes)."""
        H, qh, m = model.hidden_size, len(shard.q_heads), model.mla
        q_in = m.q_lora_rank or H
        return [weight_gemm(batch, m.q_lora_rank + m.cache_dim, H, wdt, impl),
                Elementwise(2 * batch * (m.q_lora_rank + m.kv_lora_rank) * ACTIVATION_BYTES),
                weight_gemm(batch, qh * (m.qk_nope_head_dim + m.qk_rope_head_dim), q_in, wdt, impl),
                weight_gemm(batch, qh * m.kv_lora_rank, m.qk_nope_head_dim, wdt, impl)]

    def attention_kernel(self, model, shard, batch, tokens, impl):
        m = model.mla
        return MlaAttention(batch, len(shard.q_heads), tokens, m.kv_lora_rank, m.qk_rope_head_dim, impl.kv_precision)

    def output_kernels(self, model, shard, batch, wdt, impl) -> list:
        """W_UV per head, then the W_O rows."""
        n, v = len(shard.combine_heads), model.mla.v_head_dim
        return [weight_gemm(batch, n * v, model.mla.kv_lora_rank, wdt, impl),
                weight_gemm(batch, model.hidden_size, n * v, wdt, impl)]

    # --- math hooks ---------------------------------------------------------------------------------
    def weights(self, model, seed, layer, shard, storage, blocks):
        from .sharding import mla_weights

        return mla_weights(model, seed, layer, shard, storage, blocks)

    def weights_class(self):
        from .sharding import MLAWeights

        return MLAWeights

    def project(self, x, w, positions, model):
        """x [B, H] -> (latent query [B, Qh, L+R], new cache entry [B, 1, L+R], None)."""
        from .model import mla_project

        q, latent = mla_project(x, w, positions, model)
        return q, latent[:, None, :], None

    def partial_attention(self, q, k, v, lengths, model):
        """q [b, Qh, L+R], k [b, 1, C, L+R] -> (latent out [b, Qh, L], lse [b, Qh])."""
        from .model import mla_partial_attention

        return mla_partial_attention(q, k, lengths, model.mla.kv_lora_rank)

    def output(self, combined, w):
        """combined latent [B, n, L] -> W_UV, W_O rows -> partial sum [B, H]."""
        from .model import mla_output

        return mla_output(combined, w)

    def reference_attention(self, x, w, k_cache, v_cache, position, model, storage):
        from .reference import mla_attention

        return mla_attention(x, w, k_cache, position, model, storage=storage)


_GQA, _MLA = GQA(), MLA()


def family(model: ModelConfig) -> AttentionFamily:
    """The model's attention family."""
    return _GQA if model.mla is None else _MLA


def empty_partials(model: ModelConfig, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(out [0, heads, W], lse [0, heads]): the partials of no request."""
    width = family(model).partial_width(model)
    return np.zeros((0, heads, width), np.float32), np.zeros((0, heads), np.float32)
