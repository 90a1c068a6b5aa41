"""The test oracle: the same model unsharded, in plain NumPy float64 (no Numba, no MPI).

`reference_decode` works from explicit tensors only (the ones `--save-tensors` writes), so a
saved run can be recomputed independently; `reference_tensors` builds them from a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, RunConfig
from .families import family
from .kvcache import initial_kv, round_to_storage
from .sharding import (DenseFFNWeights, GQAWeights, LayerWeights, MLAWeights, MoEWeights, SwiGLUWeights,
                       full_layer_weights, initial_input, rounded_weights)


@dataclass
class ReferenceTensors:
    weights: list[LayerWeights]  # per emulated layer, unsharded
    k_init: list[np.ndarray]  # per layer [B, K, S, D] keys after RoPE (MLA: latent [B, 1, S, L+R])
    v_init: list[np.ndarray | None]  # per layer [B, K, S, D] (MLA: None)
    x0: np.ndarray  # [B, H] input of layer 0 at step 0


def reference_tensors(model: ModelConfig, run: RunConfig) -> ReferenceTensors:
    """The run's unsharded tensors, holding exactly the values its ranks store (--storage)."""
    weights = [rounded_weights(full_layer_weights(model, run.seed, layer), run.storage) for layer in range(run.layers)]
    positions = np.arange(run.context, dtype=np.int64)
    fam = family(model)
    heads, width = fam.cache_heads(model), fam.cache_width(model)
    caches = [initial_kv(run.seed, layer, range(run.batch), heads, run.context, width, range(heads), positions,
                         run.key_scale, with_values=fam.with_values) for layer in range(run.layers)]
    return ReferenceTensors(weights, [round_to_storage(k, run.storage) for k, _ in caches],
                            [None if v is None else round_to_storage(v, run.storage) for _, v in caches],
                            initial_input(model, run.seed, run.batch))


def _rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if weight is None else y * weight


def _rope(x: np.ndarray, position: int, theta: float) -> np.ndarray:
    """Rotate-half RoPE of x [..., D] at one global position."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / x.shape[-1])
    cos, sin = np.cos(position * inv_freq), np.sin(position * inv_freq)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q [B, Q, D], k, v [B, K, S, D] -> [B, Q, D], GQA head h reads KV head h // (Q/K)."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # [B, Q, S, D]
    scores = np.einsum("bqd,bqsd->bqs", q, k) / np.sqrt(q.shape[-1])
    return np.einsum("bqs,bqsd->bqd", _softmax(scores), v)


def _stored(values: np.ndarray, storage: str) -> np.ndarray:
    """A new cache entry as a rank's cache keeps it: bf16 storage rounds its float32 value."""
    return values if storage == "fp32" else np.asarray(round_to_storage(values, storage), np.float64)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def gqa_attention(x: np.ndarray, w: GQAWeights, k_cache: np.ndarray, v_cache: np.ndarray, position: int,
         model: ModelConfig, storage: str = "fp32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention output [B, H] and the caches with the new token appended."""
    B, D = x.shape[0], model.head_dim
    h = _rms_norm(x, _f64(w.attn_norm), model.norm_eps)
    q = _rope((h @ _f64(w.wq)).reshape(B, -1, D), position, model.rope_theta)
    k = _rope((h @ _f64(w.wk)).reshape(B, -1, D), position, model.rope_theta)
    v = (h @ _f64(w.wv)).reshape(B, -1, D)
    k_cache = np.concatenate([k_cache, _stored(k, storage)[:, :, None]], axis=2)
    v_cache = np.concatenate([v_cache, _stored(v, storage)[:, :, None]], axis=2)
    return _attention(q, k_cache, v_cache).reshape(B, -1) @ _f64(w.wo), k_cache, v_cache


def _mla_inputs(x: np.ndarray, w: MLAWeights, position: int, model: ModelConfig):
    """(q_nope [B, Q, nope], q_pe [B, Q, R] after RoPE, new cache entry [B, L+R])."""
    m, B = model.mla, x.shape[0]
    L, nope = m.kv_lora_rank, m.qk_nope_head_dim
    h = _rms_norm(x, _f64(w.attn_norm), model.norm_eps)
    c_q = _rms_norm(h @ _f64(w.wq_a), _f64(w.q_a_norm), model.norm_eps) if w.wq_a is not None else h
    q = (c_q @ _f64(w.wq_b)).reshape(B, -1, nope + m.qk_rope_head_dim)
    kv = h @ _f64(w.wkv_a)
    c_kv = _rms_norm(kv[:, :L], _f64(w.kv_a_norm), model.norm_eps)
    k_pe = _rope(kv[:, L:], position, model.rope_theta)
    return q[..., :nope], _rope(q[..., nope:], position, model.rope_theta), np.concatenate([c_kv, k_pe], axis=-1)


def mla_attention(x: np.ndarray, w: MLAWeights, cache: np.ndarray, position: int, model: ModelConfig,
         absorbed: bool = True, storage: str = "fp32") -> tuple[np.ndarray, np.ndarray, None]:
    """MLA attention output [B, H]; absorbed (decode) or naive (k, v up-projected per head) form."""
    m, B = model.mla, x.shape[0]
    L = m.kv_lora_rank
    q_nope, q_pe, entry = _mla_inputs(x, w, position, model)
    cache = np.concatenate([cache, _stored(entry, storage)[:, None, None, :]], axis=2)  # [B, 1, S+1, L+R]
    c_kv, k_pe = cache[:, 0, :, :L], cache[:, 0, :, L:]  # [B, S, L], [B, S, R]
    scale = 1.0 / np.sqrt(m.qk_nope_head_dim + m.qk_rope_head_dim)
    w_uk, w_uv = _f64(w.w_uk), _f64(w.w_uv)  # [Q, nope, L], [Q, L, v]
    if absorbed:
        q_latent = np.einsum("bhn,hnl->bhl", q_nope, w_uk)
        scores = (np.einsum("bhl,bsl->bhs", q_latent, c_kv) + np.einsum("bhr,bsr->bhs", q_pe, k_pe)) * scale
        p = _softmax(scores)
        values = np.einsum("bhl,hlv->bhv", np.einsum("bhs,bsl->bhl", p, c_kv), w_uv)
    else:  # materialise per-head keys and values from the latent cache
        k_nope = np.einsum("bsl,hnl->bhsn", c_kv, w_uk)  # [B, Q, S, nope]
        v = np.einsum("bsl,hlv->bhsv", c_kv, w_uv)  # [B, Q, S, v]
        scores = (np.einsum("bhn,bhsn->bhs", q_nope, k_nope) + np.einsum("bhr,bsr->bhs", q_pe, k_pe)) * scale
        values = np.einsum("bhs,bhsv->bhv", _softmax(scores), v)
    return values.reshape(B, -1) @ _f64(w.wo), cache, None


def _softmax(scores: np.ndarray) -> np.ndarray:
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _swiglu(g: np.ndarray, w: SwiGLUWeights) -> np.ndarray:
    gate, up = g @ _f64(w.w_gate), g @ _f64(w.w_up)
    return (gate / (1.0 + np.exp(-gate)) * up) @ _f64(w.w_down)


def reference_route(g: np.ndarray, w: MoEWeights, model: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(experts [B, k], weights [B, k]) in float64."""
    moe = model.moe
    logits = g @ _f64(w.router)
    scores = _softmax(logits) if moe.scoring == "softmax" else 1.0 / (1.0 + np.exp(-logits))
    experts = np.argsort(-scores, axis=-1, kind="stable")[:, : moe.experts_per_token]
    weights = np.take_along_axis(scores, experts, axis=-1)
    if moe.normalize_topk:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return experts, weights * moe.routed_scaling


def _ffn(x: np.ndarray, w: DenseFFNWeights | MoEWeights, model: ModelConfig) -> np.ndarray:
    g = _rms_norm(x, _f64(w.ffn_norm), model.norm_eps)
    if isinstance(w, DenseFFNWeights):
        return _swiglu(g, w.mlp)
    experts, weights = reference_route(g, w, model)
    out = _swiglu(g, w.shared) if w.shared is not None else np.zeros_like(g)
    for b in range(len(g)):
        for expert, weight in zip(experts[b], weights[b]):
            out[b] += weight * _swiglu(g[b:b + 1], w.experts[int(expert)])[0]
    return out


def reference_layer(x: np.ndarray, w: LayerWeights, k_cache: np.ndarray, v_cache: np.ndarray | None,
                    position: int, model: ModelConfig,
                    storage: str = "fp32") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One decode step of one layer: x [B, H] and the caches with the new token appended (rounded
    as --storage keeps it)."""
    attention, k_cache, v_cache = family(model).reference_attention(x, w.attn, k_cache, v_cache, position, model,
                                                                     storage)
    x = x + attention
    return x + _ffn(x, w.ffn, model), k_cache, v_cache


def reference_decode(model: ModelConfig, tensors: ReferenceTensors, steps: int,
                     context: int, storage: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Returns (inputs [T, B, H], outputs [T, B, H]) in float64."""
    k_caches = [np.asarray(k, np.float64) for k in tensors.k_init]
    v_caches = [_f64(v) for v in tensors.v_init]
    x = np.asarray(tensors.x0, np.float64)
    inputs, outputs = [], []
    for step in range(steps):
        inputs.append(x)
        for layer, w in enumerate(tensors.weights):
            x, k_caches[layer], v_caches[layer] = reference_layer(x, w, k_caches[layer], v_caches[layer],
                                                                  context + step, model, storage)
        outputs.append(x)
        x = _rms_norm(x, None, model.norm_eps)
    return np.stack(inputs), np.stack(outputs)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (one number per comparison)."""
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def _weights_from_group(cls, group) -> object:
    import dataclasses

    return cls(**{f.name: (group[f.name][...] if f.name in group else None) for f in dataclasses.fields(cls)})


def load_saved_tensors(file, model: ModelConfig) -> ReferenceTensors:
    """ReferenceTensors from the /tensors group a `--save-tensors` run wrote (an open h5py File)."""
    layers = sorted(int(name.split("_")[1]) for name in file["tensors/weights"])
    weights, k_init, v_init, fam = [], [], [], family(model)
    for layer in layers:
        group = file[f"tensors/weights/layer_{layer}"]
        attn = _weights_from_group(fam.weights_class(), group)
        if model.is_moe_layer(layer):
            experts = {int(e): _weights_from_group(SwiGLUWeights, g) for e, g in group["experts"].items()}
            shared = _weights_from_group(SwiGLUWeights, group["shared"]) if "shared" in group else None
            ffn = MoEWeights(group["ffn_norm"][...], group["router"][...], experts, shared)
        else:
            ffn = DenseFFNWeights(group["ffn_norm"][...], _weights_from_group(SwiGLUWeights, group))
        weights.append(LayerWeights(attn, ffn))
        cache = file[f"tensors/kv_init/layer_{layer}"]
        k_init.append(cache[fam.cache_key][...])
        v_init.append(cache["v"][...] if fam.with_values else None)
    return ReferenceTensors(weights, k_init, v_init, file["tensors/inputs"][0])
