"""The plan: one decode step of one layer as a short op list per rank (DESIGN.md section 2).

Built from (model, layout, rank, layer, local KV lengths, precision, HOP-B) by pure functions.
The emulator executes it on real data, the cost model times it; both read the same ops.
Bytes and FLOPs are those of the *modeled* precision, not of the fp32 host arrays.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .axes import ATTENTION_AXES, FFN_AXES, Axis, Stream, group_name
from .config import ACTIVATION_BYTES, LSE_BYTES, PRECISION_BYTES, Layout, ModelConfig, Strategy
from .costmodel import Collective
from .mesh import group_size
from .sharding import RankShard, even_splits, rank_shard


class OpName(str, Enum):
    QKV = "qkv"  # RMSNorm + Q/K/V (or MLA latent) projections + RoPE + KV append (steps 1-2)
    ATTENTION = "attention"  # flash-decoding partial attention (per request under KVP, step 3)
    ALL_TO_ALL = "all_to_all"  # exchange of one request's partials in the KVP group (step 4)
    COMBINE_OUT_PROJ = "combine_out_proj"  # LSE combine + (W_UV +) output projection rows (5-6)
    ALL_REDUCE_ATTN = "all_reduce_attn"  # sum of the output projection over the attention ranks
    FFN = "ffn"  # RMSNorm + SwiGLU FFN shard
    MOE = "moe"  # RMSNorm + router + the held experts hit by the batch + shared-expert shard
    ALL_REDUCE_FFN = "all_reduce_ffn"  # sum of the FFN (or the EP group's experts) over TPF
    ALL_GATHER_EP = "all_gather_ep"  # the EP groups' sums gathered, then added locally
    DISPATCH = "all_to_all_dispatch"  # dp-ep: tokens to the ranks of their experts
    EXPERTS = "experts"  # dp-ep: the held experts on the tokens received
    COMBINE = "all_to_all_combine"  # dp-ep: expert outputs back to the tokens' ranks


@dataclass(frozen=True)
class Op:
    """One op of one rank's layer plan."""

    name: OpName
    stream: Stream
    request: int = -1  # first request of a per-request (chunk) op under HOP-B, -1 for the whole batch
    requests: int = 1  # requests in the chunk starting at `request`
    # Indices of ops in the same layer plan that must finish first, beyond the order of the op's
    # own stream (ops on one stream run in plan order). At most two, so traces can store them.
    deps: tuple[int, ...] = ()
    flops: float = 0.0
    hbm_bytes: float = 0.0
    collective: Collective | None = None
    group: tuple[Axis, ...] = ()
    group_size: int = 1
    nbytes: float = 0.0  # nccl-tests "size" of the collective (per-rank buffer)

    @property
    def is_collective(self) -> bool:
        return self.collective is not None


def attention_index(chunk: int) -> int:
    """Plan index of the attention op of a chunk of requests (a request when chunks are 1)."""
    return 1 + 2 * chunk


def all_to_all_index(chunk: int) -> int:
    return 2 + 2 * chunk


def request_chunks(batch: int, a2a_chunk: int) -> list[range]:
    """Requests exchanged together: chunks of `a2a_chunk` (0: the whole batch at once)."""
    size = batch if a2a_chunk <= 0 else a2a_chunk
    return [range(start, min(start + size, batch)) for start in range(0, batch, max(size, 1))]


def _collective(name: OpName, kind: Collective, layout: Layout, axes: tuple[Axis, ...], nbytes: float,
                deps: tuple[int, ...]) -> Op:
    return Op(name, Stream.COMM, deps=deps, collective=kind, group=axes, group_size=group_size(layout, axes),
              nbytes=nbytes)


# --- attention ---------------------------------------------------------------------------------
def qkv_weight_elements(model: ModelConfig, shard: RankShard) -> int:
    """Weights read by the QKV op: W_Q/W_K/W_V columns, or MLA's down/up projections and W_UK."""
    H, q_heads = model.hidden_size, len(shard.q_heads)
    if model.mla is None:
        return H * (q_heads + 2 * len(shard.kv_heads)) * model.head_dim
    m = model.mla
    q_in = m.q_lora_rank or H
    return (H * m.q_lora_rank + q_in * q_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)
            + H * m.cache_dim + q_heads * m.qk_nope_head_dim * m.kv_lora_rank)


def out_weight_elements(model: ModelConfig, shard: RankShard) -> int:
    """Weights read after the combine: W_O rows (MLA: also W_UV) of the heads the rank combines."""
    H, n = model.hidden_size, len(shard.combine_heads)
    if model.mla is None:
        return n * model.head_dim * H
    m = model.mla
    return n * m.kv_lora_rank * m.v_head_dim + n * m.v_head_dim * H


def kv_elements_per_token(model: ModelConfig, shard: RankShard) -> int:
    """Cached elements per token per layer on a rank: K and V of its KV heads, or MLA's latent."""
    return 2 * len(shard.kv_heads) * model.head_dim if model.mla is None else model.mla.cache_dim


def ffn_weight_elements(model: ModelConfig, shard: RankShard, layer: int) -> int:
    """FFN weights held (dense shard, or router + held experts' shards + shared-expert shard)."""
    H = model.hidden_size
    if not model.is_moe_layer(layer):
        return 3 * H * len(shard.ffn_cols)
    moe = model.moe
    return H * moe.n_routed_experts + 3 * H * (len(shard.experts) * len(shard.expert_cols) + len(shard.shared_cols))


def _qkv_op(model: ModelConfig, shard: RankShard, batch: int, wb: float) -> Op:
    H, ab = model.hidden_size, ACTIVATION_BYTES
    q_heads, kv_heads = len(shard.q_heads), len(shard.kv_heads)
    weights = qkv_weight_elements(model, shard)
    if model.mla is None:
        outputs = (q_heads + 2 * kv_heads) * model.head_dim
    else:
        outputs = q_heads * model.mla.cache_dim + model.mla.cache_dim
    return Op(OpName.QKV, Stream.COMPUTE, flops=2.0 * batch * weights,
              hbm_bytes=weights * wb + batch * (H + outputs) * ab)


def attention_cost(model: ModelConfig, q_heads: int, kv_heads: int, tokens: float, wb: float) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of decode attention of one request over `tokens` cached tokens."""
    if model.mla is None:
        D = model.head_dim
        return 4.0 * q_heads * D * tokens, 2.0 * kv_heads * tokens * D * wb + 2 * q_heads * D * ACTIVATION_BYTES
    m = model.mla
    flops = 2.0 * q_heads * (m.cache_dim + m.kv_lora_rank) * tokens  # scores over L+R, values over L
    return flops, tokens * m.cache_dim * wb + 2 * q_heads * m.cache_dim * ACTIVATION_BYTES


def partial_width(model: ModelConfig) -> int:
    """Per-head width of an exchanged partial output: D (GQA) or the latent L (MLA)."""
    return model.head_dim if model.mla is None else model.mla.kv_lora_rank


def _combine_op(model: ModelConfig, shard: RankShard, batch: int, kvp: int, wb: float, deps) -> Op:
    H, n, width = model.hidden_size, len(shard.combine_heads), partial_width(model)
    weights = out_weight_elements(model, shard)
    values = n * (width if model.mla is None else model.mla.v_head_dim)
    flops = 2.0 * batch * weights + 4.0 * kvp * batch * n * width
    exchanged = kvp * batch * n * (width * ACTIVATION_BYTES + LSE_BYTES) if kvp > 1 else 0.0
    return Op(OpName.COMBINE_OUT_PROJ, Stream.COMPUTE, deps=deps, flops=flops,
              hbm_bytes=weights * wb + exchanged + batch * (values + H) * ACTIVATION_BYTES)


def attention_ops(model: ModelConfig, layout: Layout, shard: RankShard, kv_lengths: np.ndarray, wb: float,
                  hopb: bool, a2a_chunk: int = 1) -> list[Op]:
    """QKV, attention (+ an all-to-all per chunk of `a2a_chunk` requests under KVP: 1 is the
    paper's per-request HOP-B, 0 one exchange for the whole batch), combine + output projection."""
    batch = len(kv_lengths)
    q_heads, kv_heads = len(shard.q_heads), len(shard.kv_heads)
    ops = [_qkv_op(model, shard, batch, wb)]
    if layout.kvp == 1 or batch == 0:  # no exchange: one attention op over the whole batch
        costs = [attention_cost(model, q_heads, kv_heads, float(t), wb) for t in kv_lengths]
        ops.append(Op(OpName.ATTENTION, Stream.COMPUTE, flops=sum(c[0] for c in costs),
                      hbm_bytes=sum(c[1] for c in costs)))
        ops.append(_combine_op(model, shard, batch, 1, wb, ()))
        return ops
    partial_bytes = q_heads * (partial_width(model) * ACTIVATION_BYTES + LSE_BYTES)  # out [Qh, W] + lse [Qh]
    chunks = request_chunks(batch, a2a_chunk)
    for k, chunk in enumerate(chunks):
        costs = [attention_cost(model, q_heads, kv_heads, float(kv_lengths[b]), wb) for b in chunk]
        deps = () if hopb or k == 0 else (all_to_all_index(k - 1),)  # qkv precedes on the stream
        ops.append(Op(OpName.ATTENTION, Stream.COMPUTE, request=chunk.start, requests=len(chunk), deps=deps,
                      flops=sum(c[0] for c in costs), hbm_bytes=sum(c[1] for c in costs)))
        a2a = _collective(OpName.ALL_TO_ALL, Collective.ALL_TO_ALL, layout, (Axis.KVP,), len(chunk) * partial_bytes,
                          (attention_index(k),))
        ops.append(dataclasses.replace(a2a, request=chunk.start, requests=len(chunk)))
    # earlier all-to-alls precede the last one on the comm stream
    ops.append(_combine_op(model, shard, batch, layout.kvp, wb, (all_to_all_index(len(chunks) - 1),)))
    return ops


# --- FFN -----------------------------------------------------------------------------------------
def expected_moe_load(model: ModelConfig, experts_held: int, tokens: int) -> tuple[float, float]:
    """(expected distinct held experts hit, expected token-expert pairs on held experts) when each
    of `tokens` tokens picks k of E experts uniformly (the analytic stand-in for real routing)."""
    moe = model.moe
    pick = moe.experts_per_token / moe.n_routed_experts
    return experts_held * (1.0 - (1.0 - pick) ** tokens), tokens * moe.experts_per_token * experts_held / moe.n_routed_experts


def moe_cost(model: ModelConfig, shard: RankShard, tokens: int, experts_hit: float, pairs: float,
             wb: float) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of router + the held experts actually hit + the shared-expert shard.
    Only experts hit by at least one token have their weights read."""
    H, E = model.hidden_size, model.moe.n_routed_experts
    f, shared = len(shard.expert_cols), len(shard.shared_cols)
    flops = 2.0 * tokens * H * E + 6.0 * H * (pairs * f + tokens * shared)
    nbytes = (H * E + 3.0 * H * (experts_hit * f + shared)) * wb + tokens * (2 * H + E) * ACTIVATION_BYTES
    return flops, nbytes


def ffn_group(layout: Layout) -> tuple[Axis, ...]:
    """Ranks that sum their FFN shards: all N (Helix, TP), the TPA ranks (KVP-only)."""
    return (Axis.TPA,) if layout.strategy is Strategy.KVP else FFN_AXES


def ffn_ops(model: ModelConfig, layout: Layout, shard: RankShard, layer: int, batch: int, wb: float,
            first: int) -> list[Op]:
    H, ab = model.hidden_size, ACTIVATION_BYTES
    if not model.is_moe_layer(layer):
        f = len(shard.ffn_cols)
        ops = [Op(OpName.FFN, Stream.COMPUTE, deps=(first - 1,), flops=6.0 * batch * H * f,
                  hbm_bytes=3.0 * H * f * wb + batch * (2 * H + 2 * f) * ab)]
        return ops + [_collective(OpName.ALL_REDUCE_FFN, Collective.ALL_REDUCE, layout, ffn_group(layout),
                                  batch * H * ab, (first,))]
    flops, nbytes = moe_cost(model, shard, batch, *expected_moe_load(model, len(shard.experts), batch), wb)
    ops = [Op(OpName.MOE, Stream.COMPUTE, deps=(first - 1,), flops=flops, hbm_bytes=nbytes)]
    tp_axes = (Axis.TPA,) if layout.strategy is Strategy.KVP else (Axis.TPF,)
    ops.append(_collective(OpName.ALL_REDUCE_FFN, Collective.ALL_REDUCE, layout, tp_axes, batch * H * ab, (first,)))
    if layout.ep > 1:
        ops.append(_collective(OpName.ALL_GATHER_EP, Collective.ALL_GATHER, layout, (Axis.EP,),
                               layout.ep * batch * H * ab, (first + 1,)))
    return ops


# --- whole layer -------------------------------------------------------------------------------
def layer_plan(model: ModelConfig, layout: Layout, rank: int, layer: int, kv_lengths: np.ndarray,
               precision: str, hopb: bool, a2a_chunk: int = 1) -> list[Op]:
    """Ops of one layer on `rank`; kv_lengths [B] are its local tokens per request incl. the new one
    (under dp-ep: of the requests it owns)."""
    shard = rank_shard(model, layout, rank)
    wb = PRECISION_BYTES[precision]
    if layout.strategy is Strategy.DP_EP:
        return _dp_ep_plan(model, layout, shard, layer, kv_lengths, wb)
    hopb = hopb and layout.strategy is Strategy.HELIX  # the baselines expose their communication
    ops = attention_ops(model, layout, shard, kv_lengths, wb, hopb, a2a_chunk)
    ops.append(_collective(OpName.ALL_REDUCE_ATTN, Collective.ALL_REDUCE, layout, ATTENTION_AXES,
                           len(kv_lengths) * model.hidden_size * ACTIVATION_BYTES, (len(ops) - 1,)))
    return ops + ffn_ops(model, layout, shard, layer, len(kv_lengths), wb, len(ops))


def _dp_ep_plan(model: ModelConfig, layout: Layout, shard: RankShard, layer: int, kv_lengths: np.ndarray,
                wb: float) -> list[Op]:
    """Data-parallel attention over the rank's own requests, then expert parallelism over N."""
    batch, H, ab = len(kv_lengths), model.hidden_size, ACTIVATION_BYTES
    ops = attention_ops(model, layout, shard, kv_lengths, wb, hopb=False)  # whole heads, kvp = 1
    if not model.is_moe_layer(layer):  # dense layers replicated: each rank its own tokens
        f = len(shard.ffn_cols)
        return ops + [Op(OpName.FFN, Stream.COMPUTE, flops=6.0 * batch * H * f,
                         hbm_bytes=3.0 * H * f * wb + batch * (2 * H + 2 * f) * ab)]
    moe, n = model.moe, layout.ep
    shared = len(shard.shared_cols)
    ops.append(Op(OpName.MOE, Stream.COMPUTE,  # router + shared expert on the rank's own tokens
                  flops=2.0 * batch * H * moe.n_routed_experts + 6.0 * batch * H * shared,
                  hbm_bytes=(H * moe.n_routed_experts + 3.0 * H * shared) * wb + batch * 2 * H * ab))
    send = batch * moe.experts_per_token * H * ab  # each token to the ranks of its k experts
    ops.append(_collective(OpName.DISPATCH, Collective.ALL_TO_ALL, layout, FFN_AXES, send, (len(ops) - 1,)))
    # the expected load of the held experts, from every rank's tokens (batch is per rank)
    flops, nbytes = dp_ep_expert_cost(model, shard, *expected_moe_load(model, len(shard.experts), batch * n), wb)
    ops.append(Op(OpName.EXPERTS, Stream.COMPUTE, deps=(len(ops) - 1,), flops=flops, hbm_bytes=nbytes))
    ops.append(_collective(OpName.COMBINE, Collective.ALL_TO_ALL, layout, FFN_AXES, send, (len(ops) - 1,)))
    return ops


def dp_ep_expert_cost(model: ModelConfig, shard: RankShard, experts_hit: float, pairs: float,
                      wb: float) -> tuple[float, float]:
    H, f = model.hidden_size, len(shard.expert_cols)
    return 6.0 * H * f * pairs, 3.0 * H * f * experts_hit * wb + pairs * 2 * H * ACTIVATION_BYTES


def dp_requests(batch: int, world: int, rank: int) -> range:
    """Requests a dp-ep rank owns (even split, first ranks take the remainder)."""
    bounds = even_splits(batch, world)
    return range(int(bounds[rank]), int(bounds[rank + 1]))


# --- trace fields ------------------------------------------------------------------------------
def op_dep_fields(op: Op) -> tuple[int, int]:
    """(dep0, dep1) as stored in traces, -1 for none."""
    deps = list(op.deps) + [-1, -1]
    return deps[0], deps[1]


def op_collective_fields(op: Op) -> tuple[str, str, int, float]:
    """(collective, group, group_size, bytes) as stored in traces; bytes are HBM bytes for compute."""
    if op.is_collective:
        return op.collective.value, group_name(op.group), op.group_size, op.nbytes
    return "", "", 1, op.hbm_bytes

