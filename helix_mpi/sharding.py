"""Which slice of every tensor a rank holds under a layout (pure arithmetic + synthetic tensors).

The model math (model.py) knows nothing of this: it receives whatever slices it is given.
The unsharded tensors are simply the slices of the 1-rank layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synth
from .axes import Axis
from .config import Layout, ModelConfig
from .mesh import coordinates

TRIVIAL_LAYOUT = Layout(kvp=1, tpa=1, tpf=1)


def even_splits(total: int, parts: int) -> np.ndarray:
    """Boundaries [parts+1] of `total` items split as evenly as possible (first parts larger)."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


@dataclass(frozen=True)
class HelixShard:
    """Index ranges a rank owns (half-open [start, stop))."""

    q_heads: range  # query heads of its TPA group: Q/TPA heads (attention phase)
    kv_heads: range  # KV heads of its TPA group: K/TPA heads
    combine_heads: range  # query heads it combines after the all-to-all (TP = N layout)
    a2a_splits: np.ndarray  # [KVP+1] boundaries of the TPA group's heads over its KVP ranks
    ffn_cols: range  # columns of F it holds (TPF shard)


def helix_shard(model: ModelConfig, layout: Layout, rank: int) -> HelixShard:
    c = coordinates(layout, rank)
    q_per, kv_per = model.num_heads // layout.tpa, model.num_kv_heads // layout.tpa
    q0, kv0 = c[Axis.TPA] * q_per, c[Axis.TPA] * kv_per
    splits = even_splits(q_per, layout.kvp)
    k = c[Axis.KVP]
    ffn = even_splits(model.ffn_size, layout.tpf)
    return HelixShard(
        q_heads=range(q0, q0 + q_per),
        kv_heads=range(kv0, kv0 + kv_per),
        combine_heads=range(q0 + int(splits[k]), q0 + int(splits[k + 1])),
        a2a_splits=splits,
        ffn_cols=range(int(ffn[c[Axis.TPF]]), int(ffn[c[Axis.TPF] + 1])),
    )


@dataclass
class DenseLayerWeights:
    """One layer's weights as held by one rank (x @ W convention, float32)."""

    attn_norm: np.ndarray  # [H]
    wq: np.ndarray  # [H, Qh*D]   columns of the rank's query heads
    wk: np.ndarray  # [H, Kh*D]
    wv: np.ndarray  # [H, Kh*D]
    wo: np.ndarray  # [n*D, H]    rows of the heads the rank combines
    ffn_norm: np.ndarray  # [H]
    w_gate: np.ndarray  # [H, f]  column shard of F
    w_up: np.ndarray  # [H, f]
    w_down: np.ndarray  # [f, H]  row shard of F


def _heads_cols(heads: range, head_dim: int) -> tuple[int, int]:
    return heads.start * head_dim, heads.stop * head_dim


def layer_weights(model: ModelConfig, seed: int, layer: int, shard: HelixShard) -> DenseLayerWeights:
    """Generate exactly the rank's slices; values do not depend on the layout."""
    H, Q, K, D, F = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim, model.ffn_size
    p = f"layer{layer}."
    unit = np.sqrt(3.0)  # uniform [-1, 1) * sqrt(3) has unit variance
    all_rows = (0, H)
    f0, f1 = shard.ffn_cols.start, shard.ffn_cols.stop
    return DenseLayerWeights(
        attn_norm=synth.vector(seed, p + "attn_norm", H, 0.1, 1.0),
        wq=synth.matrix_block(seed, p + "wq", (H, Q * D), all_rows, _heads_cols(shard.q_heads, D), unit / np.sqrt(H)),
        wk=synth.matrix_block(seed, p + "wk", (H, K * D), all_rows, _heads_cols(shard.kv_heads, D), unit / np.sqrt(H)),
        wv=synth.matrix_block(seed, p + "wv", (H, K * D), all_rows, _heads_cols(shard.kv_heads, D), unit / np.sqrt(H)),
        wo=synth.matrix_block(seed, p + "wo", (Q * D, H), _heads_cols(shard.combine_heads, D), (0, H),
                              unit / np.sqrt(Q * D)),
        ffn_norm=synth.vector(seed, p + "ffn_norm", H, 0.1, 1.0),
        w_gate=synth.matrix_block(seed, p + "w_gate", (H, F), all_rows, (f0, f1), unit / np.sqrt(H)),
        w_up=synth.matrix_block(seed, p + "w_up", (H, F), all_rows, (f0, f1), unit / np.sqrt(H)),
        w_down=synth.matrix_block(seed, p + "w_down", (F, H), (f0, f1), (0, H), unit / np.sqrt(F)),
    )


def full_layer_weights(model: ModelConfig, seed: int, layer: int) -> DenseLayerWeights:
    """The unsharded weights: the shard of the 1-rank layout."""
    return layer_weights(model, seed, layer, helix_shard(model, TRIVIAL_LAYOUT, 0))


def initial_input(model: ModelConfig, seed: int, batch: int) -> np.ndarray:
    """Input of layer 0 at step 0 [B, H], unit variance."""
    return synth.matrix_block(seed, "x0", (batch, model.hidden_size), (0, batch), (0, model.hidden_size),
                              np.sqrt(3.0))
