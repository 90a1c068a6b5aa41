"""The test oracle: the same model unsharded, in plain NumPy float64 (no Numba, no MPI).

`reference_decode` works from explicit tensors only (the ones `--save-tensors` writes), so a
saved run can be recomputed independently; `reference_tensors` builds them from a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, RunConfig
from .kvcache import initial_kv
from .sharding import DenseLayerWeights, full_layer_weights, initial_input


@dataclass
class ReferenceTensors:
    weights: list[DenseLayerWeights]  # per emulated layer, unsharded
    k_init: list[np.ndarray]  # per layer [B, K, S, D], keys after RoPE at positions 0..S-1
    v_init: list[np.ndarray]  # per layer [B, K, S, D]
    x0: np.ndarray  # [B, H] input of layer 0 at step 0


def reference_tensors(model: ModelConfig, run: RunConfig) -> ReferenceTensors:
    weights = [full_layer_weights(model, run.seed, layer) for layer in range(run.layers)]
    positions = np.arange(run.context, dtype=np.int64)
    caches = [initial_kv(run.seed, layer, run.batch, model.num_kv_heads, run.context, model.head_dim,
                         range(model.num_kv_heads), positions, run.key_scale) for layer in range(run.layers)]
    return ReferenceTensors(weights, [k for k, _ in caches], [v for _, v in caches],
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
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    return np.einsum("bqs,bqsd->bqd", p / p.sum(axis=-1, keepdims=True), v)


def _layer(x: np.ndarray, w: DenseLayerWeights, k_cache: np.ndarray, v_cache: np.ndarray, position: int,
           model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    B, D = x.shape[0], model.head_dim
    h = _rms_norm(x, f64(w.attn_norm), model.norm_eps)
    q = _rope((h @ f64(w.wq)).reshape(B, -1, D), position, model.rope_theta)
    k = _rope((h @ f64(w.wk)).reshape(B, -1, D), position, model.rope_theta)
    v = (h @ f64(w.wv)).reshape(B, -1, D)
    k_cache = np.concatenate([k_cache, k[:, :, None]], axis=2)
    v_cache = np.concatenate([v_cache, v[:, :, None]], axis=2)
    x = x + _attention(q, k_cache, v_cache).reshape(B, -1) @ f64(w.wo)
    g = _rms_norm(x, f64(w.ffn_norm), model.norm_eps)
    gate, up = g @ f64(w.w_gate), g @ f64(w.w_up)
    x = x + (gate / (1.0 + np.exp(-gate)) * up) @ f64(w.w_down)
    return x, k_cache, v_cache


def reference_decode(model: ModelConfig, tensors: ReferenceTensors, steps: int,
                     context: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (inputs [T, B, H], outputs [T, B, H]) in float64."""
    k_caches = [np.asarray(k, np.float64) for k in tensors.k_init]
    v_caches = [np.asarray(v, np.float64) for v in tensors.v_init]
    x = np.asarray(tensors.x0, np.float64)
    inputs, outputs = [], []
    for step in range(steps):
        inputs.append(x)
        for layer, w in enumerate(tensors.weights):
            x, k_caches[layer], v_caches[layer] = _layer(x, w, k_caches[layer], v_caches[layer],
                                                         context + step, model)
        outputs.append(x)
        x = _rms_norm(x, None, model.norm_eps)
    return np.stack(inputs), np.stack(outputs)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (one number per comparison)."""
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))
