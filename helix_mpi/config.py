"""Frozen configuration: the model, the layout and the run.

Every field carries its help text in `metadata["help"]`; presets are instances, never raw dicts.
Validation raises ConfigError with one line saying what is wrong and how to fix it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .gpuops import ELEMENT_BYTES


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line: what and how to fix it."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


class Strategy(str, Enum):
    """How the N ranks are used (docs/design.md section 1: Helix and the baselines)."""

    HELIX = "helix"  # attention KVP x TPA, FFN re-provisioned as TPF x EP = N, HOP-B
    TP = "tp"  # heads over N (KV heads duplicated when N > K), FFN TP = N, two all-reduces
    KVP = "kvp"  # Medha-style: KV over KVP x TPA, FFN stays TP over the TPA ranks, nothing overlapped
    DP_EP = "dp-ep"  # each rank owns whole requests; MoE experts over N with all-to-all dispatch
    PP = "pp"  # stages of consecutive layers, each laid out as TP (or Helix with --kvp), activations sent on


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3), decoded in the absorbed form."""

    q_lora_rank: int = _help("query compression rank (0: no query compression)")
    kv_lora_rank: int = _help("latent KV rank L (the cached latent per token)")
    qk_rope_head_dim: int = _help("RoPE part R of q and k per head (k's is shared by all heads)")
    qk_nope_head_dim: int = _help("non-RoPE part of q and k per head")
    v_head_dim: int = _help("value head size")

    @property
    def cache_dim(self) -> int:
        """Cached values per token: latent L + shared RoPE key R."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class MoEConfig:
    """Routed experts + shared experts replacing the FFN after the first dense layers."""

    n_routed_experts: int = _help("routed experts E")
    n_shared_experts: int = _help("shared experts (always active; one SwiGLU of that many widths)")
    experts_per_token: int = _help("top-k routed experts per token")
    expert_ffn_size: int = _help("width of one expert's SwiGLU")
    first_dense_layers: int = _help("leading layers with a dense FFN of width ffn_size", default=0)
    scoring: str = _help("router scores: softmax or sigmoid", default="softmax")
    normalize_topk: bool = _help("renormalise the top-k weights to sum to 1", default=True)
    routed_scaling: float = _help("factor on the routed experts' sum", default=1.0)


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a decoder: GQA or MLA attention, dense SwiGLU or MoE FFN."""

    name: str = _help("model name")
    hidden_size: int = _help("hidden size H")
    num_heads: int = _help("query heads Q")
    num_kv_heads: int = _help("KV heads K (Q must be a multiple of K)")
    head_dim: int = _help("head size D (even, for RoPE)")
    ffn_size: int = _help("FFN width F")
    num_layers: int = _help("decoder layers of the full model")
    vocab_size: int = _help("vocabulary V (embedding and LM head rows; 0: no LM head is modeled)", default=0)
    rope_theta: float = _help("RoPE base theta", default=500000.0)
    norm_eps: float = _help("RMSNorm epsilon", default=1e-5)
    mla: MLAConfig | None = _help("latent attention (then K = 1 and D = nope + rope)", default=None)
    moe: MoEConfig | None = _help("mixture of experts FFN", default=None)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model {self.name!r}: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 0:
            raise ConfigError(f"model {self.name!r}: vocab_size must be an integer >= 0, got {self.vocab_size!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model {self.name!r}: query heads {self.num_heads} are not a multiple of KV heads "
                f"{self.num_kv_heads}: GQA needs Q = G*K"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model {self.name!r}: head_dim {self.head_dim} must be even for RoPE")
        if not (self.rope_theta > 0 and self.norm_eps > 0):
            raise ConfigError(f"model {self.name!r}: rope_theta and norm_eps must be positive")
        if self.mla is not None:
            mla = self.mla
            if self.num_kv_heads != 1 or self.head_dim != mla.qk_nope_head_dim + mla.qk_rope_head_dim:
                raise ConfigError(f"model {self.name!r}: MLA needs num_kv_heads = 1 and head_dim = nope + rope")
            if mla.qk_rope_head_dim % 2 or min(mla.kv_lora_rank, mla.qk_rope_head_dim, mla.v_head_dim) <= 0:
                raise ConfigError(f"model {self.name!r}: MLA ranks must be positive and the rope dim even")
        if self.moe is not None:
            moe = self.moe
            if not 0 < moe.experts_per_token <= moe.n_routed_experts:
                raise ConfigError(f"model {self.name!r}: experts per token must be in 1..{moe.n_routed_experts}")
            if moe.scoring not in ("softmax", "sigmoid"):
                raise ConfigError(f"model {self.name!r}: scoring_func must be softmax or sigmoid, got {moe.scoring!r}")
            if not 0 <= moe.first_dense_layers <= self.num_layers or moe.expert_ffn_size <= 0:
                raise ConfigError(f"model {self.name!r}: bad MoE sizes (first_k_dense_replace, expert width)")

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.first_dense_layers

    @property
    def group_size(self) -> int:
        """Query heads per KV head (G = Q/K)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ModelConfig":
        fields = dict(fields)
        for key, part in (("mla", MLAConfig), ("moe", MoEConfig)):
            if fields.get(key) is not None:
                if not isinstance(fields[key], dict):
                    raise ConfigError(f"model {key} must be a table of fields, got {fields[key]!r}")
                fields[key] = part(**fields[key])
        return cls(**fields)


def _mla_model(name: str, hidden: int, heads: int, layers: int, mla: MLAConfig, ffn: int, moe: MoEConfig | None,
               vocab: int = 0, rope_theta: float = 10000.0, eps: float = 1e-6) -> ModelConfig:
    return ModelConfig(name, hidden, heads, 1, mla.qk_nope_head_dim + mla.qk_rope_head_dim, ffn, layers, vocab,
                       rope_theta, eps, mla=mla, moe=moe)


def _gqa_model(name: str, hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int, layers: int,
               vocab: int = 0, rope_theta: float = 500000.0, eps: float = 1e-5) -> ModelConfig:
    return ModelConfig(name, hidden, heads, kv_heads, head_dim, ffn, layers, vocab, rope_theta, eps)


# Public shapes from each model's Hugging Face config.json (meta-llama/Llama-3.1-*, Qwen/Qwen3-32B).
MODEL_PRESETS: dict[str, ModelConfig] = {
    "llama-3.1-405b": _gqa_model("llama-3.1-405b", 16384, 128, 8, 128, 53248, 126, 128256),
    "llama-3.1-70b": _gqa_model("llama-3.1-70b", 8192, 64, 8, 128, 28672, 80, 128256),
    "llama-3.1-8b": _gqa_model("llama-3.1-8b", 4096, 32, 8, 128, 14336, 32, 128256),
    # Qwen/Qwen3-32B config.json: hidden 5120, 64 heads, 8 KV heads of 128, FFN 25600, 64 layers,
    # vocab 151936, rope_theta 1e6, rms_norm_eps 1e-6 (its per-head q/k RMSNorm is not modeled).
    "qwen3-32b": _gqa_model("qwen3-32b", 5120, 64, 8, 128, 25600, 64, 151936, 1000000.0, 1e-6),
    # Qwen/Qwen2.5-72B-Instruct config.json: hidden 8192, 64 heads, 8 KV heads, FFN 29568, 80 layers.
    "qwen2.5-72b": _gqa_model("qwen2.5-72b", 8192, 64, 8, 128, 29568, 80, 152064, 1000000.0, 1e-6),
    # Tiny test models: same structure, shapes small enough for exact checks on a laptop.
    "tiny": _gqa_model("tiny", 64, 8, 4, 16, 96, 4, 256, 10000.0),
    # Q/K = 3 (not a power of two); 12 heads over 8 ranks and F = 100 over 8 ranks: uneven shards.
    "tiny-gqa3": _gqa_model("tiny-gqa3", 48, 12, 4, 8, 100, 3, 250, 10000.0),
    # A small model large enough for quick benchmarks.
    "small": _gqa_model("small", 1024, 16, 8, 64, 2816, 8, 32000),
    # deepseek-ai/DeepSeek-R1 config.json: hidden 7168, 128 heads, q_lora 1536, kv_lora 512, rope 64,
    # nope 128, v 128, 61 layers (first 3 dense, FFN 18432), 256 routed experts of width 2048 + 1
    # shared, top-8, sigmoid scoring, norm_topk_prob, routed_scaling_factor 2.5, vocab 129280. Not
    # modeled: group-limited routing (n_group/topk_group), the score-correction bias, YaRN rope
    # scaling, multi-token prediction. DeepSeek-V3 has the same shapes.
    "deepseek-r1": _mla_model("deepseek-r1", 7168, 128, 61, MLAConfig(1536, 512, 64, 128, 128), 18432,
                              MoEConfig(256, 1, 8, 2048, 3, "sigmoid", True, 2.5), 129280),
    # Tiny MLA + MoE test model: 8 experts (top-2) so a small batch leaves some experts idle.
    "tiny-mla-moe": _mla_model("tiny-mla-moe", 64, 8, 3, MLAConfig(24, 32, 8, 16, 16), 96,
                               MoEConfig(8, 1, 2, 24, 1, "softmax", True, 1.0), 256),
    "tiny-mla-moe-sigmoid": _mla_model("tiny-mla-moe-sigmoid", 64, 8, 2, MLAConfig(0, 32, 8, 16, 12), 96,
                                       MoEConfig(8, 2, 3, 20, 0, "sigmoid", True, 2.5), 256),
}

DEFAULT_MODEL = "tiny"  # `run`: emulated on this machine
# `model`, `sweep` and `advise` answer for a full-size model: the same defaults for all three
ANALYTIC_DEFAULT_MODEL = "deepseek-r1"
ANALYTIC_DEFAULT_CONTEXT = 1_000_000

# Hugging Face config.json field -> ModelConfig field.
_HF_FIELDS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "intermediate_size": "ffn_size",
    "num_hidden_layers": "num_layers",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "norm_eps",
    "vocab_size": "vocab_size",
}
_REQUIRED_HF = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
_HF_MLA = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
_HF_MOE = ("n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
           "first_k_dense_replace", "scoring_func", "norm_topk_prob", "routed_scaling_factor")


def _int_field(fields: dict[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = fields.get(key, default)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{source}: {key} must be a non-negative integer, got {value!r}")
    return value


def _mla_from_hf(fields: dict[str, Any], source: str) -> MLAConfig | None:
    if fields.get("kv_lora_rank") is None:
        return None
    return MLAConfig(*(_int_field(fields, key, source) for key in _HF_MLA))


def _moe_from_hf(fields: dict[str, Any], source: str) -> MoEConfig | None:
    if not fields.get("n_routed_experts"):
        return None
    return MoEConfig(
        _int_field(fields, "n_routed_experts", source), _int_field(fields, "n_shared_experts", source, 0),
        _int_field(fields, "num_experts_per_tok", source), _int_field(fields, "moe_intermediate_size", source),
        _int_field(fields, "first_k_dense_replace", source, 0), str(fields.get("scoring_func", "softmax")),
        bool(fields.get("norm_topk_prob", True)), float(fields.get("routed_scaling_factor", 1.0)))


def _model_from_hf(fields: dict[str, Any], name: str, source: str, strict: bool) -> ModelConfig:
    if strict:
        known = set(_HF_FIELDS) | {"name", "quantization_config"} | set(_HF_MLA) | set(_HF_MOE)
        for key in fields:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
                raise ConfigError(f"{source}: unknown field {key!r}{hint}")
    missing = [key for key in _REQUIRED_HF if key not in fields]
    if missing:
        raise ConfigError(f"{source}: missing field {missing[0]!r} (Hugging Face config.json names)")
    kwargs: dict[str, Any] = {"name": str(fields.get("name", name))}
    for hf_key, ours in _HF_FIELDS.items():
        if hf_key in fields:
            kwargs[ours] = fields[hf_key]
    mla, moe = _mla_from_hf(fields, source), _moe_from_hf(fields, source)
    if mla is not None:  # one latent KV "head"; head_dim is the q/k head size nope + rope
        kwargs["num_kv_heads"], kwargs["head_dim"] = 1, mla.qk_nope_head_dim + mla.qk_rope_head_dim
        kwargs["mla"] = mla
    kwargs["moe"] = moe
    kwargs.setdefault("num_kv_heads", kwargs["num_heads"])
    if "head_dim" not in kwargs or kwargs["head_dim"] is None:
        if kwargs["hidden_size"] % kwargs["num_heads"]:
            raise ConfigError(f"{source}: head_dim missing and hidden_size is not a multiple of heads")
        kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_heads"]
    for key in ("rope_theta", "norm_eps"):
        if key in kwargs:
            if not isinstance(kwargs[key], (int, float)) or isinstance(kwargs[key], bool):
                raise ConfigError(f"{source}: {key} must be a number, got {kwargs[key]!r}")
            kwargs[key] = float(kwargs[key])
    return ModelConfig(**kwargs)


def _model_path(spec: str) -> Path:
    """The file a --model that is not a preset names: a .toml or .json file, or a folder holding
    a Hugging Face config.json; one line saying what is wrong otherwise."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path / "config.json"
    if path.suffix in (".toml", ".json") or "/" in spec or os.sep in spec:
        if not path.is_file():
            raise ConfigError(f"model file {spec}: no such file: check the path (or use a preset: "
                              f"{', '.join(MODEL_PRESETS)})")
        if path.suffix not in (".toml", ".json"):
            raise ConfigError(f"model file {spec}: not a .toml or .json file: pass a TOML file or a Hugging Face "
                              "config.json")
        return path
    close = difflib.get_close_matches(spec, list(MODEL_PRESETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"unknown model {spec!r}: {hint}use a preset ({', '.join(MODEL_PRESETS)}) "
                      "or a path to a .toml or config.json file")


def load_model(spec: str) -> ModelConfig:
    """A preset name, a TOML file, or a Hugging Face config.json (HF field names in both files)."""
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    path = _model_path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"model file {spec}: cannot read it ({reason})") from None
    try:
        fields = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model file {spec}: not valid {path.suffix[1:].upper()}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"model file {spec}: not valid {path.suffix[1:].upper()}: nested too deeply") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"model file {spec}: expected an object of fields at the top level")
    return _model_from_hf(fields, path.stem, f"model file {spec}", strict=path.suffix == ".toml")


@dataclass(frozen=True)
class Layout:
    """How N ranks are arranged: attention N = KVP x TPA, FFN N = TPF x EP (per strategy); under
    pipeline stages (pp) these lay out each of the PP stages, N = PP x KVP x TPA."""

    kvp: int = _help("KV parallelism: ranks sharing the KV cache along the sequence")
    tpa: int = _help("attention tensor parallelism over heads (TPA <= K under Helix)")
    tpf: int = _help("FFN tensor parallelism (Helix dense: TPF = N)")
    ep: int = _help("expert parallelism (1 for dense models)", default=1)
    strategy: Strategy = _help("helix, tp, kvp, dp-ep or pp", default=Strategy.HELIX)
    pp: int = _help("pipeline stages (pp: kvp, tpa, tpf and ep lay out one stage)", default=1)

    @property
    def world_size(self) -> int:
        from .strategies import rules_for

        return rules_for(self).world_size(self)

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["strategy"] = self.strategy.value
        if self.pp == 1:  # as traces and JSON outputs had it before pipeline stages
            del fields["pp"]
        return fields


def default_ep(model: ModelConfig, world_size: int) -> int:
    """Helix MoE default: as many EP groups as divide both N and E (TPF = N / EP)."""
    from .strategies.helix import default_ep as helix_default_ep

    return helix_default_ep(model, world_size)


def default_layout(model: ModelConfig, world_size: int, strategy: Strategy = Strategy.HELIX) -> Layout:
    """TPA = the largest divisor of K that divides N, KVP = N / TPA, TPF x EP = N."""
    return make_layout(model, world_size, None, None, strategy)


def make_layout(model: ModelConfig, world_size: int, kvp: int | None, tpa: int | None,
                strategy: Strategy | str = Strategy.HELIX, ep: int | None = None, pp: int | None = None) -> Layout:
    """The layout of a strategy from optional --kvp/--tpa/--ep (and --pp) flags, completing the rest
    from N (each strategy's rule: `strategies/`)."""
    from .strategies import rules_of

    rules = rules_of(strategy)
    if pp is not None and not rules.pipelined and pp != 1:
        raise ConfigError(f"--pp {pp}: pipeline stages need --strategy pp")
    if rules.pipelined:
        return rules.make_layout(model, world_size, kvp, tpa, ep, pp=pp)
    return rules.make_layout(model, world_size, kvp, tpa, ep)


def validate_layout(model: ModelConfig, layout: Layout, world_size: int) -> None:
    """Refuse, with one line, a layout that does not fit the model or the world size."""
    from .strategies import rules_for

    n = layout.world_size
    if n != world_size:
        raise ConfigError(
            f"layout KVP={layout.kvp} x TPA={layout.tpa} = {n} ranks but the job has {world_size}: "
            f"run with -n {n} or choose --kvp/--tpa with KVP*TPA = {world_size}"
        )
    rules_for(layout).validate(model, layout, n)
    if model.moe is not None and model.moe.n_routed_experts % layout.ep:
        raise ConfigError(f"EP={layout.ep} must divide the {model.moe.n_routed_experts} routed experts: "
                          "choose --ep among the divisors of both N and E")


class Precision(str, Enum):
    """A modeled numeric format (of weights, the KV cache or the routed experts). A str Enum: it
    equals, hashes and prints as its text, so tables keyed by "fp4" and files keep working."""

    FP4 = "fp4"  # NVFP4: 4 bits + one FP8 scale per 16 values
    FP8 = "fp8"
    FP8_BLOCK = "fp8_block"  # FP8 weights with 128x128 block scales (DeepSeek-V3/R1 checkpoints): other GEMM kernels
    BF16 = "bf16"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


PRECISIONS = ("fp4", "fp8", "bf16")  # of the KV cache, and of the weights with FP8_BLOCK
FP8_BLOCK = Precision.FP8_BLOCK.value
WEIGHT_PRECISIONS = ("fp4", "fp8", FP8_BLOCK, "bf16")
STORAGES = ("fp32", "bf16")  # host arrays; bf16 is kept as uint16 (kernels.bf16)
COMMS = ("trtllm", "nccl")
# Bytes per element of weights and KV cache at each modeled precision (NVFP4: with its block scales).
PRECISION_BYTES = {**ELEMENT_BYTES, FP8_BLOCK: ELEMENT_BYTES["fp8"]}


@dataclass(frozen=True)
class Implementation:
    """How the modeled GPUs run the plan: numeric formats, communication library, CUDA graphs."""

    precision: Precision = _help("precision of the weights: fp4 (NVFP4), fp8, fp8_block (128x128 block scales) or "
                                 "bf16", default=Precision.FP4)
    kv_precision: Precision = _help("precision of the KV cache: fp8 or bf16 (fp4: no measured kernel, roofline "
                                    "only)", default=Precision.FP8)
    comm: str = _help("collectives: trtllm (TensorRT-LLM's custom all-reduce fused with residual + RMSNorm, its "
                      "one-kernel all-to-all over NVLink) or nccl (NCCL as nccl-tests measures it)", default="trtllm")
    cuda_graphs: bool = _help("kernels launched from CUDA graphs (a small gap each) rather than one by one from "
                              "the host", default=True)
    moe_precision: Precision | None = _help("precision of the routed experts' weights (None: as the other "
                                            "weights); deployments mix them, e.g. FP8 GEMMs with block-scaled FP8 "
                                            "experts", default=None)

    def __post_init__(self) -> None:
        for name, allowed in (("precision", WEIGHT_PRECISIONS), ("kv_precision", PRECISIONS), ("comm", COMMS),
                              ("moe_precision", WEIGHT_PRECISIONS + (None,))):
            value = getattr(self, name)
            if value not in allowed:
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} must be one of {', '.join(allowed)}, got {value!r}")
            if name != "comm" and value is not None:  # the formats as Precision members
                object.__setattr__(self, name, Precision(value))

    @property
    def experts(self) -> Precision:
        """Precision of the routed experts' weights."""
        return self.moe_precision or self.precision

    @property
    def fused_norm(self) -> bool:
        """Residual add + RMSNorm run inside the preceding all-reduce kernel (TensorRT-LLM's fusion)."""
        return self.comm == "trtllm"

    def to_dict(self) -> dict[str, Any]:
        return {name: value.value if isinstance(value, Precision) else value
                for name, value in dataclasses.asdict(self).items()}


MAX_KEY_SCALE = 1e30  # initial keys up to ~1.7e30: their float32 squares and logits stay below 3.4e38


@dataclass(frozen=True)
class RunConfig:
    """One emulation: a batch of requests that all start from the same context length."""

    batch: int = _help("requests decoded together (B)", default=1)
    context: int = _help("tokens already in every request's KV cache (S)", default=256)
    steps: int = _help("decode steps (new tokens per request)", default=4)
    layers: int = _help("layers to emulate (the modeled TTL scales them to the full model)", default=2)
    tokens_per_block: int = _help("KV round robin: consecutive tokens placed on one KVP rank", default=16)
    seed: int = _help("seed of the counter-based generator of all weights and inputs", default=0)
    precision: str = _help("modeled precision of the weights: fp4, fp8 or bf16", default="fp4")
    kv_precision: str = _help("modeled precision of the KV cache: fp8, bf16 or fp4", default="fp8")
    comm: str = _help("modeled collectives: trtllm or nccl", default="trtllm")
    cuda_graphs: bool = _help("modeled kernels launched from CUDA graphs", default=True)
    moe_precision: str | None = _help("modeled precision of the routed experts (None: --precision)", default=None)
    hopb: bool = _help("HOP-B: overlap request b's all-to-all with request b+1's attention", default=True)
    a2a_chunk: int = _help("requests per KVP all-to-all: 0 the whole batch in one exchange (TensorRT-LLM's "
                           "Helix kernel, the default), 1 one per request (HOP-B as in the paper)", default=0)
    storage: str = _help("host storage of weights and KV cache: fp32, or bf16 (half the memory, upcast in the "
                         "kernels); independent of the modeled --precision", default="fp32")
    key_scale: float = _help("scale of the initial keys (large values test softmax stability)", default=1.0)

    def __post_init__(self) -> None:
        for name in ("batch", "steps", "layers", "tokens_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not isinstance(self.context, int) or self.context < 0:
            raise ConfigError(f"--context must be an integer >= 0, got {self.context!r}")
        self.implementation()  # validates precision, kv_precision and comm
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.storage not in STORAGES:
            raise ConfigError(f"--storage must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        if not isinstance(self.a2a_chunk, int) or self.a2a_chunk < 0:
            raise ConfigError(f"--a2a-chunk must be an integer >= 0 (0: the whole batch), got {self.a2a_chunk!r}")
        if not (isinstance(self.key_scale, (int, float)) and 0 < self.key_scale <= MAX_KEY_SCALE):
            raise ConfigError(f"--key-scale must be a number in (0, {MAX_KEY_SCALE:g}] (float32 keys and logits stay "
                              f"finite), got {self.key_scale!r}")

    def implementation(self) -> Implementation:
        return Implementation(self.precision, self.kv_precision, self.comm, self.cuda_graphs, self.moe_precision)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_run_fits_model(model: ModelConfig, run: RunConfig) -> None:
    if run.layers > model.num_layers:
        raise ConfigError(f"--layers {run.layers} exceeds the {model.num_layers} layers of {model.name}")


def layer_parameters(model: ModelConfig, layer: int) -> int:
    """Weights of one whole layer (every rank's shards together): projections and FFN or experts."""
    from .plan import ffn_weight_elements, out_weight_elements, qkv_weight_elements
    from .sharding import rank_shard

    whole = rank_shard(model, Layout(1, 1, 1, 1), 0)
    return int(qkv_weight_elements(model, whole) + out_weight_elements(model, whole)
               + ffn_weight_elements(model, whole, layer))


def parameter_count(model: ModelConfig) -> int:
    """Weights of the full model (every layer's projections and FFN or experts, embeddings and an
    untied LM head; norms left out): what `helix-mpi models` lists."""
    from .plan import ffn_weight_elements, out_weight_elements, qkv_weight_elements
    from .sharding import rank_shard

    whole = rank_shard(model, Layout(1, 1, 1, 1), 0)  # one rank holding everything
    attention = qkv_weight_elements(model, whole) + out_weight_elements(model, whole)
    layers = sum(attention + ffn_weight_elements(model, whole, layer) for layer in range(model.num_layers))
    return int(layers + 2 * model.vocab_size * model.hidden_size)


def model_facts(model: ModelConfig) -> dict[str, Any]:
    """One row of `helix-mpi models`: name, parameters, layers, attention type, MoE, vocabulary."""
    from .families import family

    attention, text = family(model).describe(model)
    moe, moe_text = None, "-"
    if model.moe is not None:
        m = model.moe
        moe = {"routed_experts": m.n_routed_experts, "experts_per_token": m.experts_per_token,
               "shared_experts": m.n_shared_experts, "first_dense_layers": m.first_dense_layers}
        moe_text = (f"{m.n_routed_experts} experts top-{m.experts_per_token} + {m.n_shared_experts} shared"
                    + (f", {m.first_dense_layers} dense first" if m.first_dense_layers else ""))
    return {"name": model.name, "params": parameter_count(model), "layers": model.num_layers,
            "hidden_size": model.hidden_size, "attention": attention, "attention_text": text, "moe": moe,
            "moe_text": moe_text, "vocab": model.vocab_size}
