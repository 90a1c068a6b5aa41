"""How close the modeled times are to measured ones: end-to-end TPOT and nccl-tests collectives.

End to end (`predict_tpot`): a row of a serving benchmark (the `e2e_tpot` columns of NVIDIA
AIConfigurator: model, system, backend, mode, ISL/OSL, concurrency, TP/PP/DP/EP, quantisation)
becomes one of our configurations, and its time per output token is

    TPOT = decode step (every layer + LM head + sampling, at the mean context ISL + OSL / 2)
           + prefill share                                     (aggregated serving only)

The prefill share is the physics of continuous batching in one engine: each of the B requests
decoding together needs one prefill of ISL tokens every OSL decode steps, and those prefill
tokens run inside the same engine's iterations, so on average each step also carries B / OSL
prefills: (B / OSL) x t_prefill(ISL). With attention data parallelism (DP ranks of B requests each)
the ranks run in lock step (every step's expert all-to-all joins them), so any rank's prefill
stalls all of them: DP x B / OSL prefills per step, each one rank's attention and dense layers
over ISL tokens plus its experts spread over the EP ranks. t_prefill is timed with the same kernel tables: every
GEMM at m = ISL tokens, causal attention over ISL tokens at the GEMMs' fitted FLOP rate, the
all-reduces of ISL x H activations. Disaggregated rows time the decode workers alone. Nothing in
this module is fitted to the rows it predicts.

Collectives (`predict_collectives`): every row of an nccl-tests log, timed by the cost model as
NCCL (comm "nccl") on the topology.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, Implementation, Layout, ModelConfig, Strategy, load_model, validate_layout
from .gpuops import ACTIVATION_BYTES, Gemm
from .kvcache import tokens_held
from .plan import dp_requests, gemm_dtype
from .timing import StepTimer, TimeModel
from .strategies import rules_for
from .topology import Topology, load_topology

# AIConfigurator system names -> our topologies (B300 runs the GB300's B300 GPU: its tables)
SYSTEM_TOPOLOGY = {"gb200": "gb200-nvl72", "gb300": "gb300-nvl72", "b200_sxm": "dgx-b200", "b300_sxm": "dgx-b300",
                   "h200_sxm": "dgx-h200", "h100_sxm": "dgx-h100"}
# Hugging Face model names -> presets (first match of the pattern, case-insensitive)
MODEL_PATTERNS = [(r"deepseek-(v3|r1)", "deepseek-r1"), (r"llama-?3(\.\d)?-405b", "llama-3.1-405b"),
                  (r"llama-?3(\.\d)?-70b", "llama-3.1-70b"), (r"llama-?3(\.\d)?-8b", "llama-3.1-8b"),
                  (r"qwen3-32b", "qwen3-32b"), (r"qwen2\.5-72b", "qwen2.5-72b")]
QUANT_PRECISION = {"": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "bf16", "fp8": "fp8",
                   "fp8_block": "fp8_block", "nvfp4": "fp4", "fp4": "fp4", "w4a8_mxfp4_mxfp8": "fp4"}
# checkpoints whose FP8 weights are 128x128 block-scaled (DeepSeek-V3/R1 config.json:
# quantization_config.weight_block_size [128, 128]): engines run "fp8" on them with block-scale kernels
BLOCK_SCALED_FP8 = ("deepseek-r1",)
# collectives each engine runs: TensorRT-LLM its custom all-reduce and one-kernel all-to-all; SGLang
# the same all-reduce kernel through FlashInfer (trtllm_allreduce_fusion, sglang
# python/sglang/srt/layers/flashinfer_comm_fusion.py); vLLM its own custom all-reduce, which has no
# measured table here, so NCCL's measured one stands in for it
BACKEND_COMM = {"trtllm": "trtllm", "sglang": "trtllm", "vllm": "nccl"}
DECODE_DOMINATED = 0.25  # ISL <= OSL / 4: the rows the decode model is judged on


class FidelityError(ValueError):
    """A measurement file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class E2ERow:
    """What we read of one measured serving run."""

    id: str
    model: str
    system: str
    backend: str
    mode: str  # agg | disagg
    isl: int
    osl: int
    batch: int  # requests decoded together per attention-DP rank (AIConfigurator batch_size; disagg: decode_batch_size)
    tp: int
    pp: int
    dp: int  # attention data parallelism
    moe_tp: int
    moe_ep: int
    precision: str  # the GEMMs' weights
    moe_precision: str  # the routed experts' weights
    tpot_s: float  # measured

    @property
    def decode_dominated(self) -> bool:
        return self.isl <= DECODE_DOMINATED * self.osl


@dataclass
class Prediction:
    row: E2ERow
    tpot_s: float | None = None
    decode_s: float | None = None
    prefill_share_s: float | None = None
    layout: str = ""
    skipped: str = ""  # why no prediction
    extra: dict = field(default_factory=dict)

    @property
    def error(self) -> float | None:
        return None if self.tpot_s is None else self.tpot_s / self.row.tpot_s - 1.0


# --- reading -----------------------------------------------------------------------------------------
def _number(raw: dict, key: str, where: str, default: float | None = None) -> float:
    text = (raw.get(key) or "").strip()
    if not text:
        if default is None:
            raise FidelityError(f"{where}: column {key!r} is empty")
        return default
    try:
        value = float(text)
    except ValueError:
        raise FidelityError(f"{where}: column {key!r} is not a number ({text!r})") from None
    if not math.isfinite(value) or value < 0:
        raise FidelityError(f"{where}: column {key!r} must be a finite number >= 0, got {text!r}")
    return value


def _row(raw: dict, where: str) -> E2ERow:
    mode = (raw.get("mode") or "agg").strip()
    prefix = "decode_" if mode == "disagg" else ""
    count = lambda key, default=1.0: max(int(_number(raw, prefix + key, where, default)), 1)  # noqa: E731
    quant = (raw.get("gemm_quant_mode") or raw.get("precision") or "").strip().lower()
    moe_quant = (raw.get("moe_quant_mode") or quant).strip().lower()
    for value in (quant, moe_quant):
        if value not in QUANT_PRECISION:
            raise FidelityError(f"{where}: unknown quantisation {value!r} (known: {', '.join(QUANT_PRECISION)})")
    tpot_ms = _number(raw, "silicon_tpot_ms", where)
    if tpot_ms <= 0:
        raise FidelityError(f"{where}: silicon_tpot_ms must be > 0")
    return E2ERow(id=raw.get("id", where), model=(raw.get("model_path") or "").strip(),
                  system=(raw.get("system") or "").strip(), backend=(raw.get("backend") or "").strip(), mode=mode,
                  isl=int(_number(raw, "isl", where)), osl=max(int(_number(raw, "osl", where)), 1),
                  batch=count("batch_size"), tp=count("tp_size"), pp=count("pp_size"), dp=count("attention_dp_size"),
                  moe_tp=count("moe_tp_size"), moe_ep=count("moe_ep_size"), precision=QUANT_PRECISION[quant],
                  moe_precision=QUANT_PRECISION[moe_quant], tpot_s=tpot_ms * 1e-3)


def read_e2e(path: str | Path) -> list[E2ERow]:
    """Rows of an e2e_tpot CSV (AIConfigurator's columns; see topologies/calibration/e2e_tpot.csv)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("model_path", "system", "isl", "osl", "silicon_tpot_ms")
                       if c not in (reader.fieldnames or [])]
            if missing:
                raise FidelityError(f"{path}: not an e2e TPOT file (no {missing[0]!r} column)")
            return [_row(raw, f"{path}:{number + 2}") for number, raw in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FidelityError(f"{path}: cannot read as CSV ({exc})") from None


# --- mapping a row to a configuration ----------------------------------------------------------------
def model_for(name: str) -> ModelConfig | None:
    for pattern, preset in MODEL_PATTERNS:
        if re.search(pattern, name, re.IGNORECASE):
            return load_model(preset)
    return None


def layout_for(row: E2ERow, model: ModelConfig) -> tuple[Layout, int]:
    """(layout of one pipeline stage, pipeline stages): attention DP + EP, or TP attention with
    the MoE split TPF x EP (TPF = moe_tp) as the engines do."""
    if row.dp > 1:
        if model.moe is None:
            raise ConfigError("attention DP of a dense model is plain data parallelism")
        return Layout(1, 1, 1, row.dp, Strategy.DP_EP), row.pp
    tpf, ep = (row.moe_tp, row.moe_ep) if model.moe and row.moe_tp * row.moe_ep == row.tp else (row.tp, 1)
    return Layout(1, row.tp, tpf, ep, Strategy.TP), row.pp


def implementation_for(row: E2ERow, model: ModelConfig | None = None) -> Implementation:
    kv = "bf16" if row.precision == "bf16" else "fp8"  # quantised checkpoints ship an FP8 KV cache
    block = model is not None and model.name in BLOCK_SCALED_FP8
    weights, experts = ("fp8_block" if block and p == "fp8" else p for p in (row.precision, row.moe_precision))
    return Implementation(weights, kv, BACKEND_COMM.get(row.backend, "nccl"), True, experts)


# --- timing ------------------------------------------------------------------------------------------
def decode_step_s(model: ModelConfig, layout: Layout, pp: int, batch: int, context: int, timer: TimeModel) -> float:
    """One decode step of the whole model at `batch` requests of `context` tokens (dp-ep: per rank);
    with PP stages, micro-batches of batch / PP flow through the stages one after another."""
    micro = max(batch // pp, 1)
    n = layout.world_size
    if rules_for(layout).data_parallel:
        kv = [np.full(len(dp_requests(micro * n, n, r)), context, dtype=np.int64) for r in range(n)]
    else:
        kv = np.full((n, micro), tokens_held(context, layout.kvp, 1)[0], dtype=np.int64)
    step = StepTimer(model, layout, True, timer)(kv)
    if pp > 1:
        step += float(timer.pipeline_sends_seconds(pp, n, micro * model.hidden_size * ACTIVATION_BYTES))
    return step


def prefill_s(model: ModelConfig, layout: Layout, pp: int, tokens: int, timer: TimeModel) -> float:
    """One prompt of `tokens` tokens through the model (see the module docstring)."""
    if tokens <= 0:
        return 0.0
    tp = 1 if rules_for(layout).data_parallel else layout.tpa
    H, wdt = model.hidden_size, gemm_dtype(model, timer.impl)
    heads = max(model.num_heads // tp, 1)
    gemms = [Gemm(tokens, max(n, 1), max(k, 1), wdt) for n, k in _prefill_gemms(model, tp, layout.ep)]
    per_flop = _seconds_per_flop(timer, wdt)
    width = model.head_dim if model.mla is None else model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
    attention = 2.0 * tokens * tokens * heads * width * per_flop  # causal: half of 4 S^2 heads D
    layer = float(timer.kernels_seconds(gemms)) + attention
    if tp > 1:
        layer += 2 * float(timer.collective_seconds("all_reduce", tokens * H * ACTIVATION_BYTES, tp))
    head = float(timer.kernels_seconds([Gemm(1, max(model.vocab_size // tp, 1), H, "bf16")])) if model.vocab_size else 0.0
    return model.num_layers * layer + head


def _prefill_gemms(model: ModelConfig, tp: int, ep: int = 1) -> list[tuple[int, int]]:
    """(n, k) of one layer's GEMMs per rank in prefill (MoE: the routed experts every token uses,
    as one GEMM of top-k widths, and the shared ones; tp = 1: attention DP, whose routed experts
    are spread over the ep ranks)."""
    H, D = model.hidden_size, model.head_dim
    if model.mla is None:
        attn = [((model.num_heads + 2 * model.num_kv_heads) * D // tp, H), (H, model.num_heads * D // tp)]
    else:
        m = model.mla
        attn = [(m.q_lora_rank + m.cache_dim, H), (model.num_heads * D // tp, m.q_lora_rank or H),
                (model.num_heads * (m.qk_nope_head_dim + m.v_head_dim) // tp, m.kv_lora_rank),
                (H, model.num_heads * m.v_head_dim // tp)]
    if model.moe is None:
        width = model.ffn_size // tp
    else:
        moe = model.moe
        routed = moe.experts_per_token * moe.expert_ffn_size // (tp if tp > 1 else ep)
        width = routed + moe.n_shared_experts * moe.expert_ffn_size // tp
    return attn + [(2 * width, H), (H, width)]


def _seconds_per_flop(timer: TimeModel, dtype: str) -> float:
    cal = timer.topo.calibration
    fits = {} if cal is None else cal.fits.gemm
    for name in (dtype, "fp8", "bf16"):
        if name in fits and fits[name].coefficients[2] > 0:
            return fits[name].coefficients[2]
    return 1.0 / timer.topo.gpu.flops_per_s["bf16"]


def predict_tpot(row: E2ERow, topologies: dict[str, Topology] | None = None) -> Prediction:
    """The modeled TPOT of one measured row (or why it cannot be predicted)."""
    prediction = Prediction(row)
    model = model_for(row.model)
    if model is None:
        prediction.skipped = f"unknown model {row.model!r}"
        return prediction
    name = SYSTEM_TOPOLOGY.get(row.system)
    if name is None:
        prediction.skipped = f"unknown system {row.system!r}"
        return prediction
    topologies = {} if topologies is None else topologies
    topo = topologies.setdefault(name, load_topology(name))
    try:
        layout, pp = layout_for(row, model)
        validate_layout(model, layout, layout.world_size)
        timer = TimeModel(topo, implementation_for(row, model))
    except ConfigError as exc:
        prediction.skipped = f"layout not supported: {exc}"
        return prediction
    context = row.isl + row.osl // 2
    decode = decode_step_s(model, layout, pp, row.batch, context, timer)
    share = 0.0
    if row.mode == "agg":
        ranks_in_step = layout.world_size if rules_for(layout).data_parallel else 1
        share = ranks_in_step * row.batch / row.osl * prefill_s(model, layout, pp, row.isl, timer)
    prediction.tpot_s, prediction.decode_s, prediction.prefill_share_s = decode + share, decode, share
    prediction.layout = (f"{layout.strategy.value} N={layout.world_size} tpa={layout.tpa} tpf={layout.tpf} "
                         f"ep={layout.ep} pp={pp}")
    return prediction


# --- collectives ---------------------------------------------------------------------------------------
@dataclass
class CollectivePrediction:
    path: str
    op: str
    ranks: int
    size: float
    measured_s: float
    predicted_s: float
    source: str

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0


def predict_collectives(log, topo: Topology, comm: str = "nccl") -> list[CollectivePrediction]:
    """Every row of a parsed nccl-tests log (calibration.nccltests) timed by the timing engine."""
    from .costmodel import SOURCES

    seconds, sources = TimeModel(topo, Implementation(comm=comm)).collective_timing(log.op, log.sizes, log.ranks)
    return [CollectivePrediction(log.path, log.op, log.ranks, float(size), float(measured), float(predicted),
                                 SOURCES[int(source)])
            for size, measured, predicted, source in zip(log.sizes, log.seconds, np.broadcast_to(seconds, log.sizes.shape),
                                                         np.broadcast_to(sources, log.sizes.shape))]


# --- statistics ---------------------------------------------------------------------------------------
def error_stats(errors) -> dict[str, Any]:
    """median |error|, median signed error, geometric mean of predicted / measured, worst, count."""
    errors = np.asarray([e for e in errors if e is not None], dtype=float)
    if len(errors) == 0:
        return {"rows": 0}
    ratios = 1.0 + errors
    return {"rows": int(len(errors)), "median_abs_error": float(np.median(np.abs(errors))),
            "median_error": float(np.median(errors)), "geomean_ratio": float(np.exp(np.mean(np.log(ratios)))),
            "p90_abs_error": float(np.percentile(np.abs(errors), 90)),
            "worst_error": float(errors[np.argmax(np.abs(errors))])}
