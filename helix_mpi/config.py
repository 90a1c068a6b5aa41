"""Frozen configuration: the model, the layout and the run.

Every field carries its help text in `metadata["help"]`; presets are instances, never raw dicts.
Validation raises ConfigError with one line saying what is wrong and how to fix it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line: what and how to fix it."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-style dense decoder (GQA attention, SwiGLU FFN)."""

    name: str = _help("model name")
    hidden_size: int = _help("hidden size H")
    num_heads: int = _help("query heads Q")
    num_kv_heads: int = _help("KV heads K (Q must be a multiple of K)")
    head_dim: int = _help("head size D (even, for RoPE)")
    ffn_size: int = _help("FFN width F")
    num_layers: int = _help("decoder layers of the full model")
    rope_theta: float = _help("RoPE base theta", default=500000.0)
    norm_eps: float = _help("RMSNorm epsilon", default=1e-5)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model {self.name!r}: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model {self.name!r}: query heads {self.num_heads} are not a multiple of KV heads "
                f"{self.num_kv_heads}: GQA needs Q = G*K"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model {self.name!r}: head_dim {self.head_dim} must be even for RoPE")
        if not (self.rope_theta > 0 and self.norm_eps > 0):
            raise ConfigError(f"model {self.name!r}: rope_theta and norm_eps must be positive")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (G = Q/K)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Public shapes from each model's Hugging Face config.json (meta-llama/Llama-3.1-*).
MODEL_PRESETS: dict[str, ModelConfig] = {
    "llama-3.1-405b": ModelConfig("llama-3.1-405b", 16384, 128, 8, 128, 53248, 126, 500000.0, 1e-5),
    "llama-3.1-70b": ModelConfig("llama-3.1-70b", 8192, 64, 8, 128, 28672, 80, 500000.0, 1e-5),
    "llama-3.1-8b": ModelConfig("llama-3.1-8b", 4096, 32, 8, 128, 14336, 32, 500000.0, 1e-5),
    # Tiny test models: same structure, shapes small enough for exact checks on a laptop.
    "tiny": ModelConfig("tiny", 64, 8, 4, 16, 96, 4, 10000.0, 1e-5),
    # Q/K = 3 (not a power of two); 12 heads over 8 ranks and F = 100 over 8 ranks: uneven shards.
    "tiny-gqa3": ModelConfig("tiny-gqa3", 48, 12, 4, 8, 100, 3, 10000.0, 1e-5),
    # A small model large enough for quick benchmarks.
    "small": ModelConfig("small", 1024, 16, 8, 64, 2816, 8, 500000.0, 1e-5),
}

DEFAULT_MODEL = "tiny"

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
}
_REQUIRED_HF = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")


def _model_from_hf(fields: dict[str, Any], name: str, source: str, strict: bool) -> ModelConfig:
    if strict:
        known = set(_HF_FIELDS) | {"name"}
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


def load_model(spec: str) -> ModelConfig:
    """A preset name, a TOML file, or a Hugging Face config.json (HF field names in both files)."""
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    path = Path(spec)
    if path.suffix not in (".toml", ".json"):
        close = difflib.get_close_matches(spec, list(MODEL_PRESETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown model {spec!r}: {hint}use a preset ({', '.join(MODEL_PRESETS)}) "
            "or a path to a .toml or config.json file"
        )
    if not path.is_file():
        raise ConfigError(f"model file {spec!r} not found")
    text = path.read_text()
    try:
        fields = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model file {spec}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"model file {spec}: expected an object of fields at the top level")
    return _model_from_hf(fields, path.stem, f"model file {spec}", strict=path.suffix == ".toml")


@dataclass(frozen=True)
class Layout:
    """How N ranks are arranged: attention N = KVP x TPA, FFN N = TPF x EP."""

    kvp: int = _help("KV parallelism: ranks sharing the KV cache along the sequence")
    tpa: int = _help("attention tensor parallelism over KV heads (TPA <= K)")
    tpf: int = _help("FFN tensor parallelism (Helix dense: TPF = N)")
    ep: int = _help("expert parallelism (1 for dense models)", default=1)

    @property
    def world_size(self) -> int:
        return self.kvp * self.tpa

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def default_layout(model: ModelConfig, world_size: int) -> Layout:
    """TPA = the largest divisor of K that divides N, KVP = N / TPA, TPF = N."""
    tpa = max(d for d in range(1, model.num_kv_heads + 1) if model.num_kv_heads % d == 0 and world_size % d == 0)
    return Layout(kvp=world_size // tpa, tpa=tpa, tpf=world_size)


def make_layout(model: ModelConfig, world_size: int, kvp: int | None, tpa: int | None) -> Layout:
    """The layout from optional --kvp/--tpa flags, completing the missing one from the world size."""
    if kvp is None and tpa is None:
        return default_layout(model, world_size)
    if kvp is not None and kvp < 1 or tpa is not None and tpa < 1:
        raise ConfigError(f"--kvp and --tpa must be >= 1 (got kvp={kvp}, tpa={tpa})")
    if tpa is None:
        tpa = world_size // kvp if world_size % kvp == 0 else 0
        if tpa == 0:
            raise ConfigError(f"--kvp {kvp} does not divide the {world_size} ranks: choose KVP*TPA = {world_size}")
    if kvp is None:
        kvp = world_size // tpa if world_size % tpa == 0 else 0
        if kvp == 0:
            raise ConfigError(f"--tpa {tpa} does not divide the {world_size} ranks: choose KVP*TPA = {world_size}")
    return Layout(kvp=kvp, tpa=tpa, tpf=kvp * tpa)


def validate_layout(model: ModelConfig, layout: Layout, world_size: int) -> None:
    """Refuse, with one line, a layout that does not fit the model or the world size."""
    n = layout.kvp * layout.tpa
    if n != world_size:
        raise ConfigError(
            f"layout KVP={layout.kvp} x TPA={layout.tpa} = {n} ranks but the job has {world_size}: "
            f"run with -n {n} or choose --kvp/--tpa with KVP*TPA = {world_size}"
        )
    if layout.tpa > model.num_kv_heads or model.num_kv_heads % layout.tpa:
        raise ConfigError(
            f"TPA={layout.tpa} must divide the {model.num_kv_heads} KV heads of {model.name} "
            "(Helix never duplicates KV heads): lower --tpa and raise --kvp"
        )
    if layout.tpf * layout.ep != n:
        raise ConfigError(f"FFN layout TPF={layout.tpf} x EP={layout.ep} must use all {n} ranks")
    if layout.ep != 1:
        raise ConfigError(f"EP={layout.ep}: expert parallelism needs an MoE model; {model.name} is dense")
    if model.ffn_size < layout.tpf:
        raise ConfigError(f"FFN width {model.ffn_size} is smaller than TPF={layout.tpf}: use fewer ranks")
    heads_per_tpa = model.num_heads // layout.tpa
    if heads_per_tpa < layout.kvp:
        raise ConfigError(
            f"after the all-to-all each of the KVP={layout.kvp} ranks needs at least one of the "
            f"{heads_per_tpa} query heads of its TPA group: use at most {model.num_heads} ranks"
        )


PRECISIONS = ("fp4", "fp8", "bf16")
# Bytes per element of weights and KV cache at each modeled precision (block scales ignored).
PRECISION_BYTES = {"fp4": 0.5, "fp8": 1.0, "bf16": 2.0}
ACTIVATION_BYTES = 2.0  # activations and exchanged partials travel in bf16
LSE_BYTES = 4.0  # log-sum-exp values stay fp32


@dataclass(frozen=True)
class RunConfig:
    """One emulation: a batch of requests that all start from the same context length."""

    batch: int = _help("requests decoded together (B)", default=1)
    context: int = _help("tokens already in every request's KV cache (S)", default=256)
    steps: int = _help("decode steps (new tokens per request)", default=4)
    layers: int = _help("layers to emulate (the modeled TTL scales them to the full model)", default=2)
    tokens_per_block: int = _help("KV round robin: consecutive tokens placed on one KVP rank", default=16)
    seed: int = _help("seed of the counter-based generator of all weights and inputs", default=0)
    precision: str = _help("modeled precision of weights and KV cache: fp4, fp8 or bf16", default="fp4")
    hopb: bool = _help("HOP-B: overlap request b's all-to-all with request b+1's attention", default=True)
    key_scale: float = _help("scale of the initial keys (large values test softmax stability)", default=1.0)

    def __post_init__(self) -> None:
        for name in ("batch", "steps", "layers", "tokens_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not isinstance(self.context, int) or self.context < 0:
            raise ConfigError(f"--context must be an integer >= 0, got {self.context!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_run_fits_model(model: ModelConfig, run: RunConfig) -> None:
    if run.layers > model.num_layers:
        raise ConfigError(f"--layers {run.layers} exceeds the {model.num_layers} layers of {model.name}")
