"""The plan: one decode step of one layer as a short op list per rank (DESIGN.md section 2).

Built once from (model, layout, batch, local KV lengths, precision, HOP-B) by pure functions.
The emulator executes it on real data, the cost model times it; both read the same ops.
Bytes and FLOPs are those of the *modeled* precision, not of the fp32 host arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .axes import ATTENTION_AXES, Axis, Stream, group_name
from .config import ACTIVATION_BYTES, LSE_BYTES, PRECISION_BYTES, Layout, ModelConfig
from .costmodel import Collective
from .mesh import group_size
from .sharding import helix_shard


class OpName(str, Enum):
    QKV = "qkv"  # RMSNorm + QKV projection + RoPE + KV append (paper step 1-2)
    ATTENTION = "attention"  # flash-decoding partial attention of one request (step 3)
    ALL_TO_ALL = "all_to_all"  # exchange of one request's partials in the KVP group (step 4)
    COMBINE_OUT_PROJ = "combine_out_proj"  # LSE combine + output projection row shard (steps 5-6)
    ALL_REDUCE_ATTN = "all_reduce_attn"  # sum of the output projection over all N ranks (step 6)
    FFN = "ffn"  # RMSNorm + SwiGLU FFN column/row shard (TPF = N)
    ALL_REDUCE_FFN = "all_reduce_ffn"  # sum of the FFN over the TPF group


@dataclass(frozen=True)
class Op:
    """One op of one rank's layer plan."""

    name: OpName
    stream: Stream
    request: int = -1  # request index for per-request ops (HOP-B), -1 for the whole batch
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


def attention_index(request: int) -> int:
    return 1 + 2 * request


def all_to_all_index(request: int) -> int:
    return 2 + 2 * request


def helix_layer_plan(model: ModelConfig, layout: Layout, rank: int, kv_lengths: np.ndarray,
                     precision: str, hopb: bool) -> list[Op]:
    """Ops of one Helix dense layer on `rank`; kv_lengths [B] are its local tokens incl. the new one."""
    shard = helix_shard(model, layout, rank)
    batch = len(kv_lengths)
    H, D = model.hidden_size, model.head_dim
    q_heads, kv_heads, n_comb = len(shard.q_heads), len(shard.kv_heads), len(shard.combine_heads)
    f = len(shard.ffn_cols)
    wb, ab = PRECISION_BYTES[precision], ACTIVATION_BYTES
    kvp_size, world = group_size(layout, (Axis.KVP,)), group_size(layout, ATTENTION_AXES)

    qkv_cols = (q_heads + 2 * kv_heads) * D
    ops = [Op(OpName.QKV, Stream.COMPUTE, flops=2.0 * batch * H * qkv_cols,
              hbm_bytes=H * qkv_cols * wb + batch * (H + qkv_cols) * ab)]
    partial_bytes = q_heads * (D * ab + LSE_BYTES)  # one request's out [Qh, D] + lse [Qh]
    for b in range(batch):
        tokens = float(kv_lengths[b])
        deps = () if hopb or b == 0 else (all_to_all_index(b - 1),)  # qkv precedes on the stream
        ops.append(Op(OpName.ATTENTION, Stream.COMPUTE, request=b, deps=deps,
                      flops=4.0 * q_heads * D * tokens,
                      hbm_bytes=2.0 * kv_heads * tokens * D * wb + 2 * q_heads * D * ab))
        ops.append(Op(OpName.ALL_TO_ALL, Stream.COMM, request=b, deps=(attention_index(b),),
                      collective=Collective.ALL_TO_ALL, group=(Axis.KVP,), group_size=kvp_size,
                      nbytes=partial_bytes))
    combine = len(ops)
    ops.append(Op(OpName.COMBINE_OUT_PROJ, Stream.COMPUTE,
                  deps=(all_to_all_index(batch - 1),),  # earlier all-to-alls precede on the comm stream
                  flops=2.0 * batch * n_comb * D * H + 4.0 * kvp_size * batch * n_comb * D,
                  hbm_bytes=n_comb * D * H * wb + kvp_size * batch * n_comb * (D * ab + LSE_BYTES)))
    ops.append(Op(OpName.ALL_REDUCE_ATTN, Stream.COMM, deps=(combine,),
                  collective=Collective.ALL_REDUCE, group=ATTENTION_AXES, group_size=world,
                  nbytes=batch * H * ab))
    ops.append(Op(OpName.FFN, Stream.COMPUTE, deps=(combine + 1,),
                  flops=2.0 * batch * H * 3 * f, hbm_bytes=3.0 * H * f * wb + batch * (2 * H + 2 * f) * ab))
    ops.append(Op(OpName.ALL_REDUCE_FFN, Stream.COMM, deps=(combine + 2,),
                  collective=Collective.ALL_REDUCE, group=(Axis.TPF,), group_size=layout.tpf,
                  nbytes=batch * H * ab))
    return ops


def op_dep_fields(op: Op) -> tuple[int, int]:
    """(dep0, dep1) as stored in traces, -1 for none."""
    deps = list(op.deps) + [-1, -1]
    return deps[0], deps[1]


def op_collective_fields(op: Op) -> tuple[str, str, int, float]:
    """(collective, group, group_size, bytes) as stored in traces; bytes are HBM bytes for compute."""
    if op.is_collective:
        return op.collective.value, group_name(op.group), op.group_size, op.nbytes
    return "", "", 1, op.hbm_bytes
