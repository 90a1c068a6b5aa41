"""Which slice of every tensor a rank holds under a layout (pure arithmetic + synthetic tensors).

The model math (model.py) knows nothing of this: it receives whatever slices it is given.
The unsharded tensors are simply the slices of the 1-rank layout.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import synth
from .config import Layout, ModelConfig
from .kernels import from_bf16, to_bf16
from .mesh import coordinates
from .strategies import rules_for
from .strategies.base import even_splits  # noqa: F401 (also imported from here)

TRIVIAL_LAYOUT = Layout(kvp=1, tpa=1, tpf=1)
UNIT = np.sqrt(3.0)  # uniform [-1, 1) * sqrt(3) has unit variance


@dataclass(frozen=True)
class RankShard:
    """Index ranges a rank owns (half-open)."""

    q_heads: range  # query heads whose attention it computes
    kv_heads: range  # KV heads it caches (MLA: the one latent head)
    combine_heads: range  # query heads it combines and projects after the all-to-all (TP = N layout)
    a2a_splits: np.ndarray  # [KVP+1] boundaries of q_heads over the KVP group (relative to q_heads)
    ffn_cols: range  # columns of the dense FFN width F it holds
    experts: range  # routed experts it holds
    expert_cols: range  # columns of each held expert's width
    shared_cols: range  # columns of the shared experts' total width


@functools.lru_cache(maxsize=65536)
def rank_shard(model: ModelConfig, layout: Layout, rank: int) -> RankShard:
    """The index ranges `rank` owns, as its strategy slices the tensors (`strategies/`); cached:
    pure in its arguments, callers must not modify it."""
    rules, c = rules_for(layout), coordinates(layout, rank)
    q_heads, kv_heads, splits, k = rules.head_pieces(model, layout, c)
    combine = range(q_heads.start + int(splits[k]), q_heads.start + int(splits[k + 1]))
    return RankShard(q_heads, kv_heads, combine, splits, *rules.ffn_pieces(model, layout, c))


# --- weights -------------------------------------------------------------------------------
@dataclass
class GQAWeights:
    """One layer's GQA attention weights held by a rank (x @ W convention, float32)."""

    attn_norm: np.ndarray  # [H]
    wq: np.ndarray  # [H, Qh*D]   columns of its query heads
    wk: np.ndarray  # [H, Kh*D]
    wv: np.ndarray  # [H, Kh*D]
    wo: np.ndarray  # [n*D, H]    rows of the heads it combines


@dataclass
class MLAWeights:
    """One layer's MLA weights held by a rank (absorbed decode form)."""

    attn_norm: np.ndarray  # [H]
    wq_a: np.ndarray | None  # [H, q_lora] query down-projection (replicated), None without q_lora
    q_a_norm: np.ndarray | None  # [q_lora]
    wq_b: np.ndarray  # [q_lora or H, Qh*(nope+rope)] columns of its query heads
    wkv_a: np.ndarray  # [H, L+R] latent KV down-projection (replicated)
    kv_a_norm: np.ndarray  # [L]
    w_uk: np.ndarray  # [Qh, nope, L] key up-projection of its query heads (absorbed into q)
    w_uv: np.ndarray  # [n, L, v] value up-projection of the heads it combines
    wo: np.ndarray  # [n*v, H]


@dataclass
class SwiGLUWeights:
    w_gate: np.ndarray  # [H, f]  column shard
    w_up: np.ndarray  # [H, f]
    w_down: np.ndarray  # [f, H]  row shard


@dataclass
class DenseFFNWeights:
    ffn_norm: np.ndarray  # [H]
    mlp: SwiGLUWeights


@dataclass
class MoEWeights:
    ffn_norm: np.ndarray  # [H]
    router: np.ndarray  # [H, E] (replicated: every rank routes every token it holds)
    experts: dict[int, SwiGLUWeights]  # routed experts held, each a column shard of its width
    shared: SwiGLUWeights | None  # column shard of the shared experts (one SwiGLU)


@dataclass
class LayerWeights:
    attn: GQAWeights | MLAWeights
    ffn: DenseFFNWeights | MoEWeights


def _cols(heads: range, width: int) -> tuple[int, int]:
    return heads.start * width, heads.stop * width


def shard_key(shard: RankShard) -> tuple[int, ...]:
    """The sizes that fix a rank's plan: ranks with equal keys run the same ops on the same shapes."""
    return (len(shard.q_heads), len(shard.kv_heads), len(shard.combine_heads), len(shard.ffn_cols),
            len(shard.experts), len(shard.expert_cols), len(shard.shared_cols))


def shard_classes(model: ModelConfig, layout: Layout, held: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """Class of every rank [N] (equal shard shapes, and equal KV tokens `held` [N] when given) and
    the first rank of each class, in order of first appearance."""
    keys: dict[tuple, int] = {}
    rank_class = np.empty(layout.world_size, dtype=np.int64)
    for r in range(layout.world_size):
        key = shard_key(rank_shard(model, layout, r)) + (() if held is None else (int(held[r]),))
        rank_class[r] = keys.setdefault(key, len(keys))
    return rank_class, [int(np.flatnonzero(rank_class == c)[0]) for c in range(len(keys))]


# --- where weight blocks come from ------------------------------------------------------------
class BlockSource(Protocol):
    """Hands out the synthetic blocks a rank's weights are made of (read-only arrays)."""

    def get(self, spec: synth.BlockSpec) -> np.ndarray:
        """The block [r1 - r0, c1 - c0] of `spec` (spec.dtype), never to be written."""

    def free(self) -> None:
        """Release what the source keeps (the blocks it handed out must not be used after it)."""


class PrivateBlocks:
    """Every block generated by the rank that asks for it, in its own memory (freed with its arrays)."""

    def get(self, spec: synth.BlockSpec) -> np.ndarray:
        block = synth.generate_block(spec)
        block.flags.writeable = False
        return block

    def free(self) -> None:
        pass


PRIVATE_BLOCKS = PrivateBlocks()


class BlockList:
    """A dry pass: records the blocks asked for and hands out placeholders of their shape (zero
    strides over one element: no memory, no values) so the weight builders run unchanged."""

    def __init__(self) -> None:
        self.specs: list[synth.BlockSpec] = []
        self._placeholders: dict[tuple, np.ndarray] = {}  # (shape, dtype) -> read-only placeholder

    def get(self, spec: synth.BlockSpec) -> np.ndarray:
        self.specs.append(spec)
        key = (spec.block_shape, spec.dtype)
        if key not in self._placeholders:
            self._placeholders[key] = np.broadcast_to(np.zeros((), dtype=spec.dtype), spec.block_shape)
        return self._placeholders[key]


def _block(blocks, storage, seed, name, shape, rows, cols, fan_in, offset=0.0):
    """A weight block with unit-variance inputs kept unit variance, in the rank's storage."""
    scale = float(UNIT / np.sqrt(fan_in))
    return blocks.get(synth.BlockSpec(seed, name, shape, rows, cols, scale, float(offset), storage == "bf16"))


def _norm(blocks, seed, name, length):
    """A norm's weight vector [length], 1 + 0.1 * u."""
    return blocks.get(synth.vector_spec(seed, name, length, 0.1, 1.0))[0]


def gqa_weights(model: ModelConfig, seed: int, layer: int, shard: RankShard,
                storage: str = "fp32", blocks: BlockSource = PRIVATE_BLOCKS) -> GQAWeights:
    H, Q, K, D = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim
    p, rows, b = f"layer{layer}.", (0, H), blocks
    return GQAWeights(
        attn_norm=_norm(b, seed, p + "attn_norm", H),
        wq=_block(b, storage, seed, p + "wq", (H, Q * D), rows, _cols(shard.q_heads, D), H),
        wk=_block(b, storage, seed, p + "wk", (H, K * D), rows, _cols(shard.kv_heads, D), H),
        wv=_block(b, storage, seed, p + "wv", (H, K * D), rows, _cols(shard.kv_heads, D), H),
        wo=_block(b, storage, seed, p + "wo", (Q * D, H), _cols(shard.combine_heads, D), (0, H), Q * D),
    )


def mla_weights(model: ModelConfig, seed: int, layer: int, shard: RankShard,
                storage: str = "fp32", blocks: BlockSource = PRIVATE_BLOCKS) -> MLAWeights:
    H, Q, mla = model.hidden_size, model.num_heads, model.mla
    L, R, nope, v = mla.kv_lora_rank, mla.qk_rope_head_dim, mla.qk_nope_head_dim, mla.v_head_dim
    p, qk = f"layer{layer}.", nope + R
    q_in = mla.q_lora_rank or H
    qh, comb, b = shard.q_heads, shard.combine_heads, blocks
    return MLAWeights(
        attn_norm=_norm(b, seed, p + "attn_norm", H),
        wq_a=_block(b, storage, seed, p + "wq_a", (H, q_in), (0, H), (0, q_in), H) if mla.q_lora_rank else None,
        q_a_norm=_norm(b, seed, p + "q_a_norm", q_in) if mla.q_lora_rank else None,
        wq_b=_block(b, storage, seed, p + "wq_b", (q_in, Q * qk), (0, q_in), _cols(qh, qk), q_in),
        wkv_a=_block(b, storage, seed, p + "wkv_a", (H, L + R), (0, H), (0, L + R), H),
        kv_a_norm=_norm(b, seed, p + "kv_a_norm", L),
        w_uk=_block(b, storage, seed, p + "w_uk", (Q * nope, L), _cols(qh, nope), (0, L), nope).reshape(len(qh), nope, L),
        w_uv=_block(b, storage, seed, p + "w_uv", (Q * L, v), _cols(comb, L), (0, v), L).reshape(len(comb), L, v),
        wo=_block(b, storage, seed, p + "wo", (Q * v, H), _cols(comb, v), (0, H), Q * v),
    )


def swiglu_weights(seed: int, prefix: str, hidden: int, width: int, cols: range,
                   storage: str = "fp32", blocks: BlockSource = PRIVATE_BLOCKS) -> SwiGLUWeights:
    c, b = (cols.start, cols.stop), blocks
    return SwiGLUWeights(
        w_gate=_block(b, storage, seed, prefix + "w_gate", (hidden, width), (0, hidden), c, hidden),
        w_up=_block(b, storage, seed, prefix + "w_up", (hidden, width), (0, hidden), c, hidden),
        w_down=_block(b, storage, seed, prefix + "w_down", (width, hidden), c, (0, hidden), width),
    )


def ffn_weights(model: ModelConfig, seed: int, layer: int, shard: RankShard,
                storage: str = "fp32", blocks: BlockSource = PRIVATE_BLOCKS) -> DenseFFNWeights | MoEWeights:
    H, p = model.hidden_size, f"layer{layer}."
    norm = _norm(blocks, seed, p + "ffn_norm", H)
    if not model.is_moe_layer(layer):
        return DenseFFNWeights(norm, swiglu_weights(seed, p, H, model.ffn_size, shard.ffn_cols, storage, blocks))
    moe = model.moe
    E, width = moe.n_routed_experts, moe.expert_ffn_size
    shared_width = moe.n_shared_experts * width
    return MoEWeights(
        ffn_norm=norm,
        router=_block(blocks, storage, seed, p + "router", (H, E), (0, H), (0, E), H),
        experts={e: swiglu_weights(seed, f"{p}expert{e}.", H, width, shard.expert_cols, storage, blocks)
                 for e in shard.experts},
        shared=(swiglu_weights(seed, p + "shared.", H, shared_width, shard.shared_cols, storage, blocks)
                if shared_width else None),
    )


def layer_weights(model: ModelConfig, seed: int, layer: int, shard: RankShard,
                  storage: str = "fp32", blocks: BlockSource = PRIVATE_BLOCKS) -> LayerWeights:
    """Exactly the rank's slices, in its storage (fp32, or bf16 generated chunk by chunk), each
    block asked of `blocks` (default: generated here); values do not depend on the layout or the
    source. Every array is read-only."""
    from .families import family

    attn = family(model).weights(model, seed, layer, shard, storage, blocks)
    return LayerWeights(attn, ffn_weights(model, seed, layer, shard, storage, blocks))


def weight_blocks(model: ModelConfig, seed: int, layers: range | list[int], shard: RankShard,
                  storage: str = "fp32") -> list[synth.BlockSpec]:
    """The blocks the rank's weights of `layers` are made of, in the order `layer_weights` asks
    for them (a dry pass: nothing is generated)."""
    listed = BlockList()
    for layer in layers:
        layer_weights(model, seed, layer, shard, storage, listed)
    return listed.specs


def full_layer_weights(model: ModelConfig, seed: int, layer: int) -> LayerWeights:
    """The unsharded weights: the shard of the 1-rank layout."""
    return layer_weights(model, seed, layer, rank_shard(model, TRIVIAL_LAYOUT, 0))


def initial_input(model: ModelConfig, seed: int, batch: int) -> np.ndarray:
    """Input of layer 0 at step 0 [B, H], unit variance."""
    return synth.matrix_block(seed, "x0", (batch, model.hidden_size), (0, batch), (0, model.hidden_size), UNIT)



def _map_matrices(weights, convert):
    """The same weights with every array of 2+ dims passed through `convert` (norm vectors stay)."""
    if isinstance(weights, np.ndarray):
        return convert(weights) if weights.ndim >= 2 else weights
    if isinstance(weights, dict):
        return {key: _map_matrices(value, convert) for key, value in weights.items()}
    if dataclasses.is_dataclass(weights):
        return dataclasses.replace(weights, **{f.name: _map_matrices(getattr(weights, f.name), convert)
                                               for f in dataclasses.fields(weights)})
    return weights


def rounded_weights(weights: LayerWeights, storage: str) -> LayerWeights:
    """float32 weights holding exactly the values a rank stores (the reference's view)."""
    return weights if storage == "fp32" else _map_matrices(weights, lambda a: from_bf16(to_bf16(a)))
