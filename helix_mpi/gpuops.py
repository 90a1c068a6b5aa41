"""The GPU kernels a plan op launches, described by their shapes (what the cost model times).

A compute op of the plan (`plan.Op`) is a short sequence of kernels on one stream. Each kernel is
described by the shape a measured table is indexed by (a GEMM by m x n x k and weight dtype,
decode attention by batch, heads, head size, cached tokens and KV dtype, ...), so the cost model
can look it up, interpolate, or fall back to fitted physics; FLOPs and HBM bytes follow from the
shape (the roofline uses them, traces record them). Fields may be numpy arrays: the sweep and
serving time many shapes at once.

Precision names: "bf16", "fp8", "fp4" (NVFP4). Bytes per element of weights and KV cache:
`ELEMENT_BYTES`; NVFP4 stores 16 FP4 values with one FP8 (E4M3) scale, 4.5 bits per value (NVIDIA
technical blog "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference", 2025).
Activations travel in bf16 (`ACTIVATION_BYTES`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum

import numpy as np

ELEMENT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5625}  # NVFP4: 4 bits + one 8-bit scale per 16 values
GEMM_DTYPES = {**ELEMENT_BYTES, "fp8_block": 1.0}  # FP8 with 128x128 block scales (their bytes are negligible)
ACTIVATION_BYTES = 2.0  # activations and exchanged partials travel in bf16
LSE_BYTES = 4.0  # log-sum-exp values stay fp32


class KernelKind(str, Enum):
    GEMM = "gemm"  # dense x @ W (weights read once per call)
    ATTENTION = "attention"  # GQA flash-decoding over the cached tokens (RoPE + KV append fused)
    MLA = "mla"  # MLA decode attention over the cached latent (absorbed form)
    MOE = "moe"  # the routed experts of one rank (grouped GEMMs of the experts its tokens hit)
    ELEMENTWISE = "elementwise"  # memory-bound small kernels: norms, activations, combine, embedding


@dataclass(frozen=True)
class Kernel:
    """Base: numeric fields (float or ndarray) scale with the batch; `extrapolated` builds any batch
    from two probes because every shape field is affine in the batch."""

    def extrapolated(self, other: "Kernel", batches: np.ndarray) -> "Kernel":
        """This kernel (at batch 1) and `other` (the same kernel at batch 2) at every batch [n]."""
        values = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = a + (batches - 1) * (b - a) if isinstance(a, (int, float)) and a != b else a
        return replace(self, **values)


@dataclass(frozen=True)
class Gemm(Kernel):
    """y [m, n] = x [m, k] @ W [k, n] with W stored at `dtype`."""

    m: float  # rows: tokens in the batch
    n: float
    k: float
    dtype: str = "bf16"  # a GEMM_DTYPES key
    # FP8/FP4 input quantised by the kernel that produces it (TensorRT-LLM fuses it into norms,
    # activations and all-reduces), so the GEMM does not run a quantisation kernel of its own
    fused_quant: bool = False
    kind = KernelKind.GEMM

    @property
    def flops(self):
        return 2.0 * self.m * self.n * self.k

    @property
    def hbm_bytes(self):
        return self.n * self.k * GEMM_DTYPES[self.dtype] + self.m * (self.n + self.k) * ACTIVATION_BYTES


@dataclass(frozen=True)
class Attention(Kernel):
    """Decode attention of `batch` requests, each over `tokens` cached tokens (its mean)."""

    batch: float
    q_heads: float
    kv_heads: float
    head_dim: float
    tokens: float
    kv_dtype: str = "bf16"
    kind = KernelKind.ATTENTION

    @property
    def flops(self):
        return 4.0 * self.batch * self.q_heads * self.head_dim * self.tokens  # q k^T and p v

    @property
    def hbm_bytes(self):
        kv = 2.0 * self.batch * self.kv_heads * self.tokens * self.head_dim * ELEMENT_BYTES[self.kv_dtype]
        return kv + 2.0 * self.batch * self.q_heads * self.head_dim * ACTIVATION_BYTES


@dataclass(frozen=True)
class MlaAttention(Kernel):
    """MLA decode attention (absorbed): `heads` query heads over `tokens` cached latents
    [latent + rope] each; scores over latent + rope, values over the latent."""

    batch: float
    heads: float
    tokens: float
    latent: float = 512.0
    rope: float = 64.0
    kv_dtype: str = "bf16"
    kind = KernelKind.MLA

    @property
    def flops(self):
        return 2.0 * self.batch * self.heads * (2 * self.latent + self.rope) * self.tokens

    @property
    def hbm_bytes(self):
        cache = self.batch * self.tokens * (self.latent + self.rope) * ELEMENT_BYTES[self.kv_dtype]
        return cache + 2.0 * self.batch * self.heads * (self.latent + self.rope) * ACTIVATION_BYTES


@dataclass(frozen=True)
class MoeExperts(Kernel):
    """The routed experts a rank holds, on `tokens` tokens that each pick `topk` of `experts`.
    `inter` is the rank's share of an expert's width (the full width / `tp`); the rank holds
    `experts / ep` experts. `hit` experts are read and `pairs` (token, expert) rows computed: the
    expectation under uniform routing unless the emulator passes its real routing."""

    tokens: float
    hidden: float
    inter: float
    topk: float
    experts: float
    tp: float
    ep: float
    hit: float
    pairs: float
    dtype: str = "bf16"
    kind = KernelKind.MOE

    @property
    def flops(self):
        return 6.0 * self.hidden * self.inter * self.pairs  # gate, up and down of every pair

    @property
    def hbm_bytes(self):
        weights = 3.0 * self.hidden * self.inter * self.hit * GEMM_DTYPES[self.dtype]
        return weights + self.pairs * 2 * self.hidden * ACTIVATION_BYTES


@dataclass(frozen=True)
class Elementwise(Kernel):
    """`count` small memory-bound kernels moving `nbytes` in all (norms, activations, combine)."""

    nbytes: float
    count: float = 1.0
    flops: float = 0.0
    kind = KernelKind.ELEMENTWISE

    @property
    def hbm_bytes(self):
        return self.nbytes


def expected_hits(experts_held: int, experts: int, topk: int, tokens) -> tuple:
    """(expected distinct held experts hit, expected (token, held expert) pairs) when each of
    `tokens` tokens picks `topk` of `experts` uniformly."""
    pick = topk / experts
    tokens = np.asarray(tokens, dtype=float)
    hit = experts_held * (1.0 - (1.0 - pick) ** tokens)
    pairs = tokens * topk * experts_held / experts
    return (float(hit), float(pairs)) if hit.ndim == 0 else (hit, pairs)


def total_flops(kernels) -> float:
    return float(sum(_total(k.flops) for k in kernels))


def total_bytes(kernels) -> float:
    return float(sum(_total(k.hbm_bytes) for k in kernels))


def _total(value) -> float:
    return value if isinstance(value, (int, float)) else float(np.sum(value))
