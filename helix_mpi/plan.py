"""The plan: one decode step of one layer as a short op list per rank (docs/design.md section 2).

Built from (model, layout, rank, layer, local KV lengths, implementation, HOP-B) by pure functions.
The emulator executes it on real data, the timing engine times it; both read the same ops. A
compute op is the sequence of GPU kernels it launches (`gpuops`), described by their shapes at the
*modeled* precisions (weights `impl.precision`, KV cache `impl.kv_precision`), not by the host
arrays; a collective op by its kind, group and nccl-tests size. Once per step, after the last
layer, the tail plan (`tail_plan`) runs the final norm, the LM head and sampling.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .axes import ATTENTION_AXES, Axis, Stream, group_name
from .config import Implementation, Layout, ModelConfig
from .costmodel import Collective
from .families import family, weight_gemm
from .gpuops import ACTIVATION_BYTES, LSE_BYTES, Elementwise, Gemm, MoeExperts, expected_hits, total_bytes, total_flops
from .mesh import group_size, group_stride
from .sharding import RankShard, even_splits, rank_shard
from .strategies import rules_for


class OpName(str, Enum):
    QKV = "qkv"  # RMSNorm + Q/K/V (or MLA latent) projections (steps 1-2)
    ATTENTION = "attention"  # RoPE + KV append + flash-decoding partial attention (per chunk under KVP, step 3)
    ALL_TO_ALL = "all_to_all"  # exchange of one chunk's partials in the KVP group (step 4)
    COMBINE_OUT_PROJ = "combine_out_proj"  # LSE combine + (W_UV +) output projection rows (5-6)
    ALL_REDUCE_ATTN = "all_reduce_attn"  # sum of the output projection over the attention ranks
    FFN = "ffn"  # RMSNorm + SwiGLU FFN shard
    MOE = "moe"  # RMSNorm + router + the held experts hit by the batch + shared-expert shard
    ALL_REDUCE_FFN = "all_reduce_ffn"  # sum of the FFN (or the EP group's experts) over TPF
    ALL_GATHER_EP = "all_gather_ep"  # the EP groups' sums gathered, then added locally
    DISPATCH = "all_to_all_dispatch"  # dp-ep: tokens to the ranks of their experts
    EXPERTS = "experts"  # dp-ep: the held experts on the tokens received
    COMBINE = "all_to_all_combine"  # dp-ep: expert outputs back to the tokens' ranks
    LM_HEAD = "lm_head"  # tail: final RMSNorm + the rank's vocabulary rows of the LM head
    LOGITS_GATHER = "logits_gather"  # tail: the vocabulary shards' logits gathered
    SAMPLING = "sampling"  # tail: softmax / top-k sampling of the next token + its embedding row
    STAGE_RECV = "stage_recv"  # pp: the activations [B, H] from the previous stage (before its first layer)
    STAGE_SEND = "stage_send"  # pp: the activations [B, H] to the next stage (after its last layer)


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
    kernels: tuple = ()  # compute: the GPU kernels it launches, in order (gpuops)
    flops: float = 0.0  # compute: the kernels' FLOPs
    hbm_bytes: float = 0.0  # compute: the kernels' HBM bytes
    collective: Collective | None = None
    group: tuple[Axis, ...] = ()
    group_size: int = 1
    group_stride: int = 1  # rank distance between the group's members (mesh.group_stride): its placement
    nbytes: float = 0.0  # nccl-tests "size" of the collective (per-rank buffer)
    # data semantics: the op's result is added to the residual stream; otherwise it is this rank's
    # term of a sum that a later op of the plan completes (an all-reduce, or the EP all-gather)
    residual: bool = False
    # a point-to-point send between pipeline stages: the world rank at the other end, the stage
    # the activations enter (>= 1) and the ranks per stage (what places the send on the fabric)
    peer: int = -1
    into_stage: int = 0
    stage_ranks: int = 0

    @property
    def is_collective(self) -> bool:
        return self.collective is not None

    @property
    def is_stage_transfer(self) -> bool:
        return self.peer >= 0


def compute_op(name: OpName, kernels, deps: tuple[int, ...] = (), **fields) -> Op:
    """A compute op launching `kernels` (its FLOPs and bytes are theirs)."""
    kernels = tuple(kernels)
    return Op(name, Stream.COMPUTE, deps=deps, kernels=kernels, flops=total_flops(kernels),
              hbm_bytes=total_bytes(kernels), **fields)


def attention_index(chunk: int) -> int:
    """Plan index of the attention op of a chunk of requests (a request when chunks are 1)."""
    return 1 + 2 * chunk


def all_to_all_index(chunk: int) -> int:
    return 2 + 2 * chunk


def request_chunks(batch: int, a2a_chunk: int) -> list[range]:
    """Requests exchanged together: chunks of `a2a_chunk` (0: the whole batch at once)."""
    size = batch if a2a_chunk <= 0 else a2a_chunk
    return [range(start, min(start + size, batch)) for start in range(0, batch, max(size, 1))]


def collective_op(name: OpName, kind: Collective, layout: Layout, axes: tuple[Axis, ...], nbytes: float,
                deps: tuple[int, ...], residual: bool = False) -> Op:
    return Op(name, Stream.COMM, deps=deps, collective=kind, group=axes, group_size=group_size(layout, axes),
              group_stride=group_stride(layout, axes), nbytes=nbytes, residual=residual)


def gemm_dtype(model: ModelConfig, impl: Implementation) -> str:
    """The weight format of the GEMM kernels (the routed experts have their own: impl.experts)."""
    return impl.precision


def norm_kernel(batch: int, width: int) -> Elementwise:
    """RMSNorm of [batch, width] activations (read, write) with its weight vector."""
    return Elementwise((2 * batch + 1) * width * ACTIVATION_BYTES)


def _input_norm(batch: int, H: int, impl: Implementation, reduced_before: bool) -> list:
    """The residual add + RMSNorm before an attention or FFN block; none when it runs inside the
    preceding all-reduce (TensorRT-LLM's fusion, when that all-reduce has more than one member)."""
    return [] if impl.fused_norm and reduced_before else [norm_kernel(batch, H)]


# --- weights held (memory and GEMM shapes) -------------------------------------------------------
def qkv_weight_elements(model: ModelConfig, shard: RankShard) -> int:
    """Weights read by the QKV op (the attention family's projections of the rank's heads)."""
    return family(model).qkv_weight_elements(model, shard)


def out_weight_elements(model: ModelConfig, shard: RankShard) -> int:
    """Weights read after the combine: the output projection rows of the heads the rank combines."""
    return family(model).out_weight_elements(model, shard)


def kv_elements_per_token(model: ModelConfig, shard: RankShard) -> int:
    """Cached elements per token per layer on a rank: K and V of its KV heads, or MLA's latent."""
    return family(model).elements_per_token(model, shard)


def ffn_weight_elements(model: ModelConfig, shard: RankShard, layer: int) -> int:
    """FFN weights held (dense shard, or router + held experts' shards + shared-expert shard)."""
    H = model.hidden_size
    if not model.is_moe_layer(layer):
        return 3 * H * len(shard.ffn_cols)
    moe = model.moe
    return H * moe.n_routed_experts + 3 * H * (len(shard.experts) * len(shard.expert_cols) + len(shard.shared_cols))


# --- attention ---------------------------------------------------------------------------------
def qkv_kernels(model: ModelConfig, shard: RankShard, batch: int, impl: Implementation, reduced_before: bool) -> list:
    """Input norm and the attention family's projections (GQA: one fused W_Q|W_K|W_V GEMM; MLA:
    down-projections, their norms, W_q_b and the absorbed W_UK)."""
    kernels = _input_norm(batch, model.hidden_size, impl, reduced_before)
    return kernels + family(model).projection_kernels(model, shard, batch, gemm_dtype(model, impl), impl)


def attention_kernel(model: ModelConfig, shard: RankShard, batch: int, tokens: float, impl: Implementation):
    """Decode attention of `batch` requests of `tokens` local KV tokens each (their mean)."""
    return family(model).attention_kernel(model, shard, batch, tokens, impl)


def partial_width(model: ModelConfig) -> int:
    """Per-head width of an exchanged partial output: D (GQA) or the latent L (MLA)."""
    return family(model).partial_width(model)


def out_kernels(model: ModelConfig, shard: RankShard, batch: int, kvp: int, impl: Implementation) -> list:
    """LSE combine of the KVP partials (when exchanged), then (W_UV and) the W_O rows of the heads."""
    n, wdt, width = len(shard.combine_heads), gemm_dtype(model, impl), partial_width(model)
    kernels = []
    if kvp > 1:
        exchanged = kvp * batch * n * (width * ACTIVATION_BYTES + LSE_BYTES)
        kernels.append(Elementwise(exchanged + batch * n * width * ACTIVATION_BYTES, flops=4.0 * kvp * batch * n * width))
    return kernels + family(model).output_kernels(model, shard, batch, wdt, impl)


def attention_ops(model: ModelConfig, layout: Layout, shard: RankShard, kv_lengths: np.ndarray,
                  impl: Implementation, hopb: bool, a2a_chunk: int = 0, reduced_before: bool = False) -> list[Op]:
    """QKV, attention (+ an all-to-all per chunk of `a2a_chunk` requests under KVP: 1 is the
    paper's per-request HOP-B, 0 one exchange for the whole batch), combine + output projection.
    `reduced_before`: the layer's input comes out of an all-reduce the input norm can fuse into."""
    batch = len(kv_lengths)
    ops = [compute_op(OpName.QKV, qkv_kernels(model, shard, batch, impl, reduced_before))]
    if layout.kvp == 1 or batch == 0:  # no exchange: one attention op over the whole batch
        mean = float(np.mean(kv_lengths)) if batch else 0.0
        ops.append(compute_op(OpName.ATTENTION, [attention_kernel(model, shard, batch, mean, impl)]))
        ops.append(compute_op(OpName.COMBINE_OUT_PROJ, out_kernels(model, shard, batch, 1, impl)))
        return ops
    partial_bytes = len(shard.q_heads) * (partial_width(model) * ACTIVATION_BYTES + LSE_BYTES)  # out [Qh, W] + lse
    chunks = request_chunks(batch, a2a_chunk)
    for k, chunk in enumerate(chunks):
        mean = float(np.mean(kv_lengths[chunk.start:chunk.stop]))
        deps = () if hopb or k == 0 else (all_to_all_index(k - 1),)  # qkv precedes on the stream
        ops.append(compute_op(OpName.ATTENTION, [attention_kernel(model, shard, len(chunk), mean, impl)], deps,
                              request=chunk.start, requests=len(chunk)))
        a2a = collective_op(OpName.ALL_TO_ALL, Collective.ALL_TO_ALL, layout, (Axis.KVP,), len(chunk) * partial_bytes,
                          (attention_index(k),))
        ops.append(dataclasses.replace(a2a, request=chunk.start, requests=len(chunk)))
    # earlier all-to-alls precede the last one on the comm stream
    ops.append(compute_op(OpName.COMBINE_OUT_PROJ, out_kernels(model, shard, batch, layout.kvp, impl),
                          (all_to_all_index(len(chunks) - 1),)))
    return ops


# --- FFN -----------------------------------------------------------------------------------------
def expected_moe_load(model: ModelConfig, experts_held: int, tokens) -> tuple:
    """(expected distinct held experts hit, expected token-expert pairs on held experts) when each
    of `tokens` tokens picks k of E experts uniformly (the analytic stand-in for real routing)."""
    moe = model.moe
    return expected_hits(experts_held, moe.n_routed_experts, moe.experts_per_token, tokens)


def swiglu_kernels(batch: int, H: int, width: int, wdt: str, impl: Implementation) -> list:
    """gate|up GEMM, SiLU(gate) * up, down GEMM over a `width` shard."""
    return [weight_gemm(batch, 2 * width, H, wdt, impl), Elementwise(3 * batch * width * ACTIVATION_BYTES),
            weight_gemm(batch, H, width, wdt, impl)] if width else []


def moe_experts_kernel(model: ModelConfig, shard: RankShard, layout: Layout, tokens, hit, pairs,
                       impl: Implementation) -> MoeExperts:
    """The rank's routed experts on `tokens` tokens: `hit` experts read, `pairs` rows computed."""
    moe, width = model.moe, len(shard.expert_cols)
    tp = moe.expert_ffn_size / width if width else 1.0
    return MoeExperts(tokens, model.hidden_size, width, moe.experts_per_token, moe.n_routed_experts, tp,
                      moe.n_routed_experts / max(len(shard.experts), 1), hit, pairs, impl.experts)


def moe_kernels(model: ModelConfig, shard: RankShard, layout: Layout, tokens: int, hit, pairs,
                impl: Implementation, reduced_before: bool = True) -> list:
    """Input norm, router (bf16), the held routed experts, the shared-expert shard."""
    H, E = model.hidden_size, model.moe.n_routed_experts
    return (_input_norm(tokens, H, impl, reduced_before)
            + [Gemm(tokens, E, H, "bf16"), moe_experts_kernel(model, shard, layout, tokens, hit, pairs, impl)]
            + swiglu_kernels(tokens, H, len(shard.shared_cols), gemm_dtype(model, impl), impl))


def ffn_group(layout: Layout) -> tuple[Axis, ...]:
    """Ranks that sum their dense FFN shards (the layout's strategy says: all N, or the TPA ranks)."""
    return rules_for(layout).ffn_axes(layout)


def expert_tp_group(layout: Layout) -> tuple[Axis, ...]:
    """Ranks that sum their shards of the same experts (TPF, or the TPA ranks under KVP-only)."""
    return rules_for(layout).expert_tp_axes(layout)


def ffn_ops(model: ModelConfig, layout: Layout, shard: RankShard, layer: int, batch: int, impl: Implementation,
            first: int) -> list[Op]:
    H = model.hidden_size
    reduced = group_size(layout, ATTENTION_AXES) > 1  # the attention block ends with an all-reduce
    if not model.is_moe_layer(layer):
        kernels = _input_norm(batch, H, impl, reduced) + swiglu_kernels(batch, H, len(shard.ffn_cols), gemm_dtype(model, impl), impl)
        ops = [compute_op(OpName.FFN, kernels, (first - 1,))]
        return ops + [collective_op(OpName.ALL_REDUCE_FFN, Collective.ALL_REDUCE, layout, ffn_group(layout),
                                  batch * H * ACTIVATION_BYTES, (first,), residual=True)]
    hit, pairs = expected_moe_load(model, len(shard.experts), batch)
    ops = [compute_op(OpName.MOE, moe_kernels(model, shard, layout, batch, hit, pairs, impl, reduced), (first - 1,))]
    # with EP groups, the TP sum is the group's term of the sum the EP all-gather completes
    ops.append(collective_op(OpName.ALL_REDUCE_FFN, Collective.ALL_REDUCE, layout, expert_tp_group(layout),
                           batch * H * ACTIVATION_BYTES, (first,), residual=layout.ep == 1))
    if layout.ep > 1:
        ops.append(collective_op(OpName.ALL_GATHER_EP, Collective.ALL_GATHER, layout, (Axis.EP,),
                               layout.ep * batch * H * ACTIVATION_BYTES, (first + 1,), residual=True))
    return ops


# --- whole layer -------------------------------------------------------------------------------
def layer_plan(model: ModelConfig, layout: Layout, rank: int, layer: int, kv_lengths: np.ndarray,
               impl: Implementation, hopb: bool, a2a_chunk: int = 0, layers: int | None = None) -> list[Op]:
    """Ops of one layer on `rank`; kv_lengths [B] are its local tokens per request incl. the new one
    (under dp-ep: of the requests it owns). `layers`: the layers a step runs (default: the model's),
    which pipeline stages split; a rank runs no op of a layer outside its stage."""
    shard = rank_shard(model, layout, rank)
    return rules_for(layout).layer_plan(model, layout, rank, shard, layer, kv_lengths, impl, hopb, a2a_chunk,
                                        model.num_layers if layers is None else layers)


def stage_transfer(name: OpName, layout: Layout, peer: int, into_stage: int, batch: int, hidden: int,
                   deps: tuple[int, ...] = ()) -> Op:
    """The activations [batch, hidden] at the activation dtype sent to (or received from) `peer`."""
    return Op(name, Stream.COMM, deps=deps, nbytes=float(batch * hidden * ACTIVATION_BYTES), peer=peer,
              into_stage=into_stage, stage_ranks=layout.world_size // layout.pp)


def attention_all_reduce(model: ModelConfig, layout: Layout, batch: int, after: int) -> Op:
    """The sum of the output projection over the attention ranks, after op `after`."""
    return collective_op(OpName.ALL_REDUCE_ATTN, Collective.ALL_REDUCE, layout, ATTENTION_AXES,
                       batch * model.hidden_size * ACTIVATION_BYTES, (after,), residual=True)


def ends_reduced(model: ModelConfig, layout: Layout, layer: int) -> bool:
    """Whether a layer of `layer`'s kind ends with an all-reduce of more than one rank (its FFN
    sum), into which the next layer's input norm fuses (not an EP all-gather, nor a 1-rank group).
    Decided per kind of layer, so every layer of a kind has the same plan (the first layer's and
    the first MoE layer's one unfused norm per step are not charged)."""
    if model.is_moe_layer(layer):
        return layout.ep == 1 and group_size(layout, expert_tp_group(layout)) > 1
    return group_size(layout, ffn_group(layout)) > 1


def dp_requests(batch: int, world: int, rank: int) -> range:
    """Requests a data-parallel rank owns (even split, first ranks take the remainder)."""
    bounds = even_splits(batch, world)
    return range(int(bounds[rank]), int(bounds[rank + 1]))


def rank_requests(layout: Layout, batch: int, rank: int) -> range:
    """Requests of the batch that `rank` decodes under the layout's strategy."""
    return rules_for(layout).requests(batch, layout, rank)


# --- the tail of a step: LM head and sampling ----------------------------------------------------
def vocab_group(layout: Layout) -> tuple[Axis, ...]:
    """Ranks sharing the LM head's vocabulary rows: all N (dp-ep: none, each rank its own requests)."""
    return rules_for(layout).vocab_axes(layout)


def tail_plan(model: ModelConfig, layout: Layout, rank: int, batch: int, impl: Implementation) -> list[Op]:
    """Once per step after the last layer, on the ranks that run it (`StrategyRules.runs_tail`):
    final RMSNorm, the rank's V / n vocabulary rows of the LM
    head (bf16: checkpoints keep it unquantised), the logits gathered over those n ranks (fp32),
    then sampling of the next token and its embedding row. Empty when the model has no vocabulary."""
    if not model.vocab_size or not rules_for(layout).runs_tail(layout, rank):
        return []
    H, V = model.hidden_size, model.vocab_size
    group = vocab_group(layout)
    n = group_size(layout, group)
    rows = -(-V // n)  # the largest shard (shards differ by at most one row)
    ops = [compute_op(OpName.LM_HEAD, [norm_kernel(batch, H), Gemm(batch, rows, H, "bf16")])]
    if n > 1:
        ops.append(collective_op(OpName.LOGITS_GATHER, Collective.ALL_GATHER, layout, group, batch * V * LSE_BYTES, (0,)))
    sampling = Elementwise(2 * batch * V * LSE_BYTES + batch * H * ACTIVATION_BYTES, count=2)  # softmax + top-k, embed
    return ops + [compute_op(OpName.SAMPLING, [sampling], (len(ops) - 1,))]


# --- trace fields ------------------------------------------------------------------------------
def op_dep_fields(op: Op) -> tuple[int, int]:
    """(dep0, dep1) as stored in traces, -1 for none."""
    deps = list(op.deps) + [-1, -1]
    return deps[0], deps[1]


def op_shape_fields(op: Op, batch: int) -> tuple[int, float, float, float]:
    """(requests, tokens, experts_hit, pairs) as stored in traces: what replay needs to rebuild the
    op's kernels with the plan functions (`batch`: the requests of the whole-batch ops)."""
    tokens = hit = pairs = 0.0
    for kernel in op.kernels:
        if kernel.kind.value in ("attention", "mla"):
            tokens = float(kernel.tokens)
        elif kernel.kind.value == "moe":
            hit, pairs = float(kernel.hit), float(kernel.pairs)
    return (op.requests if op.request >= 0 else batch), tokens, hit, pairs


def op_collective_fields(op: Op) -> tuple[str, str, int, float]:
    """(collective, group, group_size, bytes) as stored in traces; bytes are HBM bytes for compute."""
    if op.is_collective:
        return op.collective.value, group_name(op.group), op.group_size, op.nbytes
    return "", "", 1, op.nbytes if op.is_stage_transfer else op.hbm_bytes
