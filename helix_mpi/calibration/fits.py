"""Physical models fitted to the measured tables: what times a kernel or collective outside them.

Every model is a sum of physical terms with non-negative coefficients, fitted by least squares on
relative error over all measured points of one table:

    t = t0 + bytes / achieved_bandwidth (+ FLOPs / achieved FLOP rate) (+ per-step latencies)

so a coefficient is a physical quantity (a fixed latency, an achieved bandwidth or FLOP rate, a
latency per ring step), printed by `helix-mpi topologies --fits`. Kernels that cannot fill the GPU
reach a fraction p / (p + p_half) of their bandwidth, p being the kernel's parallel work units
(requests x KV heads x cache chunks for split-KV decode attention, `decode_work_units`; the
weight matrix's size or its output tiles for GEMMs, `gemm_work_units`); p_half is chosen on a grid by the same criterion.
Nothing here is tuned to an end-to-end measurement.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..gpuops import ACTIVATION_BYTES, ELEMENT_BYTES
from .tables import SystemTables

P_HALF_GRID = np.logspace(-1, 2.5, 22)
# TensorRT-LLM's AUTO all-reduce strategy uses its custom kernels up to 256 tokens of a hidden size
# <= 8192 in bf16 (cpp/tensorrt_llm/common/customAllReduceUtils.h), i.e. up to 4 MiB, and TP <= 8
TRTLLM_ALL_REDUCE_MAX_BYTES = 256 * 8192 * 2
TRTLLM_ALL_REDUCE_MAX_RANKS = 8  # candidate half-saturation parallelism (work units)
GEMM_DTYPE_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp8_block": 1.0, "fp4": ELEMENT_BYTES["fp4"]}
MOE_DTYPE_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp8_block": 1.0, "w4a8_mxfp4_mxfp8": 4.25 / 8, "w4a16_mxfp4": 4.25 / 8,
                   "nvfp4": ELEMENT_BYTES["fp4"], "fp4": ELEMENT_BYTES["fp4"]}  # MXFP4: 4 bits + 8-bit scale per 32


def relative_nnls(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Coefficients c >= 0 minimising sum(((features @ c - t) / t)^2) (active-set elimination)."""
    scaled, ones = features / seconds[:, None], np.ones(len(seconds))
    active = list(range(features.shape[1]))
    while active:
        solution = np.linalg.lstsq(scaled[:, active], ones, rcond=None)[0]
        if (solution >= 0).all():
            coefficients = np.zeros(features.shape[1])
            coefficients[active] = solution
            return coefficients
        active = [a for a, value in zip(active, solution) if value > 0]
    return np.zeros(features.shape[1])


@dataclass(frozen=True)
class Fit:
    """t = features @ coefficients, with `p_half` the saturation parallelism of the bandwidth term."""

    terms: tuple[str, ...]  # what each coefficient multiplies
    coefficients: tuple[float, ...]
    p_half: float = 0.0
    points: int = 0  # measured points fitted
    median_error: float = 0.0  # median |predicted / measured - 1| on them

    def __call__(self, features: list) -> np.ndarray:
        return sum(c * f for c, f in zip(self.coefficients, features))

    def efficiency(self, parallel) -> np.ndarray | float:
        """Fraction p / (p + p_half) of the bandwidth reached with `parallel` work units p (1 without p_half)."""
        return parallel / (parallel + self.p_half) if self.p_half > 0 else 1.0

    def describe(self) -> dict:
        return {"terms": dict(zip(self.terms, self.coefficients)), "p_half": self.p_half, "points": self.points,
                "median_error": self.median_error}


def _fit(terms: tuple[str, ...], features_of, seconds: np.ndarray, parallel: np.ndarray | None = None) -> Fit:
    """Best fit over the p_half grid (or none when `parallel` is None); features_of(efficiency)."""
    best = None
    for p_half in (P_HALF_GRID if parallel is not None else [0.0]):
        efficiency = parallel / (parallel + p_half) if parallel is not None else 1.0
        features = np.stack(features_of(efficiency), axis=1)
        coefficients = relative_nnls(features, seconds)
        error = float(np.median(np.abs(features @ coefficients / seconds - 1)))
        if best is None or error < best.median_error:
            best = Fit(terms, tuple(float(c) for c in coefficients), float(p_half), len(seconds), error)
    return best


def _grid_points(grid) -> tuple[list[np.ndarray], np.ndarray]:
    """(coordinates per axis [n], seconds [n]) of every measured cell of a Grid."""
    cells = np.argwhere(np.isfinite(grid.log_seconds))
    coords = [np.exp(axis[cells[:, d]]) for d, axis in enumerate(grid.axes)]
    return coords, np.exp(grid.log_seconds[tuple(cells.T)])


# --- feature builders (shared by fitting and prediction) -------------------------------------------
def gemm_features(m, n, k, dtype: str, efficiency=1.0) -> list:
    weights = n * k * GEMM_DTYPE_BYTES.get(dtype, 2.0)
    activations = m * (n + k) * ACTIVATION_BYTES
    return [np.ones_like(m * n * k, dtype=float), weights / efficiency + activations, 2.0 * m * n * k]


GEMM_TERMS = ("t0_s", "s_per_byte", "s_per_flop")
# Assumed from the libraries: cuBLASLt's BF16 and per-tensor FP8 GEMMs split K at decode sizes, so
# their parallel work grows with the whole weight matrix; TensorRT-LLM's NVFP4 and 128x128
# block-scaled FP8 kernels (CUTLASS / DeepGEMM style) parallelise over output tiles only, so a
# long-K, narrow-N GEMM streams through few CTAs (measured: NVFP4 n = 8192, k = 51200 reaches half
# the bandwidth of n = 51200, k = 8192). Both forms are fitted on the same tables.
SPLIT_K_DTYPES = ("bf16", "fp8")
OUTPUT_TILE = 128.0  # columns of one output tile


def gemm_work_units(n, k, dtype: str):
    """Parallel work units of a decode GEMM: weight MiB with split-K, else output tiles."""
    return n * k / 2**20 if dtype in SPLIT_K_DTYPES else np.asarray(n, dtype=float) / OUTPUT_TILE


def attention_features(batch, q_heads, kv_heads, head_dim, tokens, kv_dtype: str, efficiency=1.0) -> list:
    kv = 2.0 * batch * kv_heads * tokens * head_dim * ELEMENT_BYTES[kv_dtype]
    return [np.ones_like(batch * tokens, dtype=float), kv / efficiency, 4.0 * batch * q_heads * head_dim * tokens]


def mla_features(batch, heads, tokens, kv_dtype: str, latent=512.0, rope=64.0, efficiency=1.0) -> list:
    cache = batch * tokens * (latent + rope) * ELEMENT_BYTES[kv_dtype]
    return [np.ones_like(batch * tokens, dtype=float), cache / efficiency,
            2.0 * batch * heads * (2 * latent + rope) * tokens]


ATTENTION_TERMS = ("t0_s", "s_per_kv_byte", "s_per_flop")
SPLIT_KV_TOKENS = 1024.0  # assumed: the cache chunk one thread block of a split-KV decode kernel reads


def decode_work_units(batch, heads, tokens):
    """Independent work units of a split-KV (flash-decoding) attention kernel: every (request, KV
    head) pair's cache is cut into chunks read in parallel and merged, so long caches fill the GPU
    even at batch 1 (measured: at batch 1 the achieved bandwidth rises with the context length)."""
    return batch * heads * np.maximum(np.asarray(tokens, dtype=float) / SPLIT_KV_TOKENS, 1.0)


def moe_features(hit, pairs, hidden, inter, element_bytes, tokens, topk) -> list:
    """The fused MoE op: weights of the held experts hit, activations of the held (token, expert)
    pairs, their FLOPs, and the routing, permutation and finalize of every token's k expert copies
    (done for all tokens whichever rank holds the experts)."""
    weights = 3.0 * hidden * inter * hit * element_bytes
    return [np.ones_like(hit * pairs, dtype=float), weights, pairs * 2.0 * hidden * ACTIVATION_BYTES,
            6.0 * hidden * inter * pairs, tokens * topk * hidden * ACTIVATION_BYTES]


MOE_TERMS = ("t0_s", "s_per_weight_byte", "s_per_activation_byte", "s_per_flop", "s_per_routed_byte")


def expected_load(tokens, topk, experts, held):
    """(experts hit, (token, expert) pairs) among `held` of `experts` under uniform top-k routing."""
    hit = held * (1.0 - (1.0 - topk / experts) ** tokens)
    return hit, tokens * topk * held / experts


# --- the fits of one system ----------------------------------------------------------------------------
class SystemFits:
    """Fitted physical models of one system's tables, computed on first use."""

    def __init__(self, tables: SystemTables):
        self.tables = tables
        self.collectives = CollectiveFits(tables)

    @functools.cached_property
    def gemm(self) -> dict[str, Fit]:
        out = {}
        for dtype, grid in self.tables.gemm.items():
            (m, n, k), seconds = _grid_points(grid)
            out[dtype] = _fit(GEMM_TERMS, lambda e: gemm_features(m, n, k, dtype, e), seconds,
                              parallel=gemm_work_units(n, k, dtype))
        return out

    @functools.cached_property
    def attention(self) -> dict[str, Fit]:
        out = {}
        for dtype, shapes in self.tables.attention.items():
            rows = []
            for (q, kv, d), grid in shapes.items():
                (batch, tokens), seconds = _grid_points(grid)
                rows.append(np.stack([batch, np.full_like(batch, q), np.full_like(batch, kv),
                                      np.full_like(batch, d), tokens, seconds], axis=1))
            b, q, kv, d, tokens, seconds = np.concatenate(rows).T
            out[dtype] = _fit(ATTENTION_TERMS, lambda e: attention_features(b, q, kv, d, tokens, dtype, e), seconds,
                              parallel=decode_work_units(b, kv, tokens))
        return out

    @functools.cached_property
    def mla(self) -> dict[str, Fit]:
        out = {}
        for dtype, shapes in self.tables.mla.items():
            rows = []
            for heads, grid in shapes.items():
                (batch, tokens), seconds = _grid_points(grid)
                rows.append(np.stack([batch, np.full_like(batch, heads), tokens, seconds], axis=1))
            b, heads, tokens, seconds = np.concatenate(rows).T
            out[dtype] = _fit(ATTENTION_TERMS, lambda e: mla_features(b, heads, tokens, dtype, efficiency=e), seconds,
                              parallel=decode_work_units(b, 1.0, tokens))
        return out

    @functools.cached_property
    def moe(self) -> Fit | None:
        """One model over every measured MoE shape and dtype of the system (bytes at each dtype)."""
        rows = []
        for dtype, shapes in self.tables.moe.items():
            for (hidden, inter, topk, experts, tp, ep), grid in shapes.items():
                (tokens,), seconds = _grid_points(grid)
                hit, pairs = expected_load(tokens, topk, experts, experts / ep)
                width = inter / tp
                rows.append(np.stack([hit, pairs, np.full_like(hit, hidden), np.full_like(hit, width),
                                      np.full_like(hit, MOE_DTYPE_BYTES.get(dtype, 1.0)), tokens,
                                      np.full_like(hit, topk), seconds], axis=1))
        if not rows:
            return None
        hit, pairs, hidden, width, element_bytes, tokens, topk, seconds = np.concatenate(rows).T
        return _fit(MOE_TERMS, lambda e: moe_features(hit, pairs, hidden, width, element_bytes, tokens, topk), seconds)

    @functools.cached_property
    def shortest_kernel_s(self) -> float | None:
        """The shortest measured kernel (a bf16 GEMM of the smallest shape): the floor of any kernel."""
        grid = self.tables.gemm.get("bf16")
        return None if grid is None else float(np.nanmin(np.exp(grid.log_seconds)))


# --- collectives ------------------------------------------------------------------------------------
def _collective_fit(op: str, grids: dict, algorithm: str) -> Fit | None:
    from ..collective_algorithms import fit_terms

    rows = []
    for n, grid in grids.items():
        (sizes,), seconds = _grid_points(grid)
        rows.append(np.stack([sizes, np.full_like(sizes, n), seconds], axis=1))
    if not rows:
        return None
    sizes, ranks, seconds = np.concatenate(rows).T
    features, terms = fit_terms(op, algorithm, sizes, ranks)
    return _fit(terms, lambda e: features, seconds)


def _large_message_bandwidth(grids: dict) -> float | None:
    """S / t at the largest measured size of the largest measured rank count (bytes/s)."""
    if not grids:
        return None
    grid = grids[max(grids)]
    (sizes,), seconds = _grid_points(grid)
    return float(sizes[-1] / seconds[-1])


class CollectiveFits:
    """NCCL's collectives fitted per op (ring form for all-reduce, all-gather and reduce-scatter,
    direct form for all-to-all), the large-message bandwidth an NVLS algorithm would reach, and
    TensorRT-LLM's one-kernel NVLink all-to-all fitted to its MoE dispatch kernel."""

    def __init__(self, tables: SystemTables):
        self.tables = tables

    @functools.cached_property
    def nccl(self) -> dict[str, Fit]:
        out = {}
        for op, grids in self.tables.nccl.items():
            fit = _collective_fit(op, grids, "direct" if op == "all_to_all" else "ring")
            if fit is not None:
                out[op] = fit
        return out

    @functools.cached_property
    def nvls_bandwidth(self) -> dict[str, float]:
        """op -> algorithm bandwidth of large messages at the largest measured rank count."""
        return {op: bw for op, grids in self.tables.nccl.items() if op != "all_to_all"
                for bw in [_large_message_bandwidth(grids)] if bw}

    @functools.cached_property
    def trtllm_all_reduce(self) -> Fit | None:
        """TensorRT-LLM's custom all-reduce (one-shot / two-shot over NVLink), ring form, fitted to
        its measured rank counts for messages up to TRTLLM_ALL_REDUCE_MAX_BYTES (where its AUTO
        strategy uses it rather than NCCL)."""
        grids = {}
        for n, grid in self.tables.trtllm_allreduce.items():
            (sizes,), seconds = _grid_points(grid)
            keep = sizes <= TRTLLM_ALL_REDUCE_MAX_BYTES
            grids[n] = (sizes[keep], seconds[keep])
        if not grids:
            return None
        sizes = np.concatenate([g[0] for g in grids.values()])
        ranks = np.concatenate([np.full(len(g[0]), n, dtype=float) for n, g in grids.items()])
        seconds = np.concatenate([g[1] for g in grids.values()])
        from ..collective_algorithms import fit_terms

        features, terms = fit_terms("all_reduce", "ring", sizes, ranks)
        return _fit(terms, lambda e: features, seconds)

    @functools.cached_property
    def one_kernel_all_to_all(self) -> Fit | None:
        """TensorRT-LLM's NVLink all-to-all (bf16 two-sided MoE dispatch), size = what a rank sends."""
        data = self.tables.moe_alltoall
        try:
            kernel = data["dtypes"]["bf16"]["kernels"]["NVLinkTwoSided"]["alltoall_dispatch"]
            hidden, topk = data["hidden_size"][0], data["topk"][0]
        except (KeyError, IndexError, TypeError):
            return None
        rows = []
        for ep, table in kernel.items():
            ep = int(ep)
            tokens = np.array(table["tokens"], dtype=float)
            seconds = np.array(table["latency_us"], dtype=float) * 1e-6
            ranks_reached = ep * (1 - (1 - 1 / ep) ** topk)  # distinct destination ranks of a token
            sizes = tokens * ranks_reached * hidden * ACTIVATION_BYTES
            rows.append(np.stack([sizes, np.full_like(sizes, ep), seconds], axis=1))
        sizes, ranks, seconds = np.concatenate(rows).T
        from ..collective_algorithms import fit_terms

        features, terms = fit_terms("all_to_all", "direct", sizes, ranks)
        return _fit(terms, lambda e: features, seconds)


# --- what was fitted, in physical units -------------------------------------------------------------
def _physical(term: str, value: float) -> tuple[str, str]:
    """(name, value with unit) of one fitted coefficient."""
    if term.endswith("_s") and not term.startswith("s_per"):
        return term[:-2], f"{value * 1e6:.2f} us"
    if term == "s_per_flop":
        return "FLOP rate", ("inf" if value == 0 else f"{1 / value / 1e12:,.0f} TFLOP/s")
    if term.startswith("s_per_"):
        name = term[len("s_per_"):].replace("_", " ") + " bandwidth"
        return name, ("inf" if value == 0 else f"{1 / value / 1e9:,.0f} GB/s")
    return term, f"{value:g}"


def describe_fits(fits: SystemFits) -> list[dict]:
    """One row per fitted model: what it times, its coefficients in physical units, how well it fits
    its own points (median |error|) and how many there were."""
    models = [(f"gemm {d}", f) for d, f in fits.gemm.items()]
    models += [(f"decode attention, {d} KV", f) for d, f in fits.attention.items()]
    models += [(f"MLA decode, {d} KV", f) for d, f in fits.mla.items()]
    models += [("MoE experts", fits.moe)] if fits.moe is not None else []
    models += [(f"NCCL {op}", f) for op, f in fits.collectives.nccl.items()]
    models += [("TensorRT-LLM all_reduce", fits.collectives.trtllm_all_reduce),
               ("TensorRT-LLM one-kernel all_to_all", fits.collectives.one_kernel_all_to_all)]
    rows = []
    for name, fit in models:
        if fit is None:
            continue
        terms = dict(_physical(t, c) for t, c in zip(fit.terms, fit.coefficients))
        if fit.p_half:
            terms["half-bandwidth work units"] = f"{fit.p_half:.3g}"
        rows.append({"model": name, "terms": terms, "points": fit.points, "median_error": fit.median_error})
    for op, bandwidth in fits.collectives.nvls_bandwidth.items():
        rows.append({"model": f"NVLS {op} (large messages)", "terms": {"bandwidth": f"{bandwidth / 1e9:,.0f} GB/s"},
                     "points": 1, "median_error": 0.0})
    if fits.shortest_kernel_s is not None:
        rows.append({"model": "shortest kernel (floor)", "terms": {"t0": f"{fits.shortest_kernel_s * 1e6:.2f} us"},
                     "points": 1, "median_error": 0.0})
    return rows
