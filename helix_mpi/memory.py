"""Per-GPU memory at the modeled precision: weights held and KV cache, against HBM capacity.

Counts every layer of the full model (not only the emulated ones). Not counted: embeddings and
LM head, activations, communication buffers and the runtime's own reserve. NVFP4 weights count
their block scales (4.5 bits per value)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .config import PRECISION_BYTES, Layout, ModelConfig
from .plan import ffn_weight_elements, kv_elements_per_token, out_weight_elements, qkv_weight_elements
from .sharding import rank_shard
from .strategies import rules_for
from .topology import Topology


def rank_memory(model: ModelConfig, layout: Layout, rank: int, batch: int, tokens: int,
                precision: str, tokens_per_block: int = 1, kv_precision: str | None = None) -> dict[str, float]:
    """Weights (at `precision`) and KV bytes (at `kv_precision`, default the same) on one rank when
    every request holds `tokens` tokens, over the model's layers the rank runs (all, or its
    pipeline stage's)."""
    shard, wb = rank_shard(model, layout, rank), PRECISION_BYTES[precision]
    kvb = PRECISION_BYTES[kv_precision or precision]
    rules = rules_for(layout)
    layers = rules.rank_layers(layout, rank, model.num_layers)
    attention = qkv_weight_elements(model, shard) + out_weight_elements(model, shard)
    weights = sum(attention + ffn_weight_elements(model, shard, layer) for layer in layers)
    requests, held = len(rules.requests(batch, layout, rank)), rules.kv_tokens(tokens, layout, rank, tokens_per_block)
    kv = requests * held * kv_elements_per_token(model, shard) * len(layers)
    return {"rank": rank, "weights_bytes": weights * wb, "kv_bytes": kv * kvb}


def memory_report(model: ModelConfig, layout: Layout, batch: int, tokens: int, precision: str,
                  topo: Topology, tokens_per_block: int = 1, kv_precision: str | None = None) -> dict[str, Any]:
    """Per-rank memory, the largest total, and whether it fits in the topology's HBM.
    `kv_read_s`: time to stream the busiest rank's whole KV cache once (every decode step does)."""
    per_rank = [rank_memory(model, layout, r, batch, tokens, precision, tokens_per_block, kv_precision)
                for r in range(layout.world_size)]
    totals = np.array([r["weights_bytes"] + r["kv_bytes"] for r in per_rank])
    return {
        "per_rank": per_rank,
        "max_weights_bytes": max(r["weights_bytes"] for r in per_rank),
        "max_kv_bytes": max(r["kv_bytes"] for r in per_rank),
        "max_total_bytes": float(totals.max()),
        "kv_read_s": max(r["kv_bytes"] for r in per_rank) / topo.gpu.hbm_bytes_per_s,
        "hbm_bytes": topo.gpu.hbm_bytes,
        "fits": bool(totals.max() <= topo.gpu.hbm_bytes),
    }
