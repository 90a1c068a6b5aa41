"""Numerical edges: contexts of 2^31 and 2^40 tokens (no integer overflow, a clear refusal where
nothing fits), batch 4096, KVP larger than the context (every shard empty but one), and logits at
the fp16 limit in the emulator (finite, within the reference tolerance)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from conftest import call_cli, run_cli
from helix_mpi import sweep
from helix_mpi.config import MODEL_PRESETS, RunConfig, load_model, make_layout
from helix_mpi.kvcache import tokens_held
from helix_mpi.plan import kv_elements_per_token
from helix_mpi.reference import _rope, reference_tensors
from helix_mpi.runner import REFERENCE_TOLERANCE, run_emulation
from helix_mpi.sharding import rank_shard
from helix_mpi.topology import load_topology
from test_sweep import _reference_ttl

HUGE_CONTEXTS = [2**31, 2**40]
TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "gb200-nvl72.toml"


def _model_json(args: list[str]) -> dict:
    done = call_cli(["model", *args, "--json"])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _exact_kv_bytes_per_gpu(name: str, gpus: int, tokens: int) -> int:
    """Python integers: the busiest GPU's KV bytes of the default Helix layout with the default FP8
    KV cache (1 B per element)."""
    model = MODEL_PRESETS[name]
    layout = make_layout(model, gpus, None, None)
    held = max(int(h) for h in tokens_held(tokens, layout.kvp, 16))
    per_token = max(kv_elements_per_token(model, rank_shard(model, layout, r)) for r in range(gpus))
    return held * per_token * model.num_layers


@pytest.mark.parametrize("name", ["llama-3.1-405b", "deepseek-r1"])
def test_model_at_2_31_and_2_40_tokens_has_no_overflow(name):
    results = {}
    for context in HUGE_CONTEXTS:
        figures = _model_json(["--model", name, "--gpus", "64", "--context", str(context), "--allow-overflow"])
        assert figures["kv_bytes_per_gpu"] == _exact_kv_bytes_per_gpu(name, 64, context + 1)  # the step's token
        assert math.isfinite(figures["ttl_s"]) and figures["ttl_s"] > 0 and not figures["fits"]
        results[context] = figures
    small, large = (results[c] for c in HUGE_CONTEXTS)
    assert large["ttl_s"] > small["ttl_s"]  # 512x the KV read dominates
    assert large["kv_read_s"] == pytest.approx(512 * small["kv_read_s"], rel=1e-6)
    refused = call_cli(["model", "--model", name, "--gpus", "64", "--context", str(2**40)])
    assert refused.returncode == 3 and "DOES NOT FIT" in refused.stdout + refused.stderr
    text = call_cli(["model", "--model", name, "--gpus", "64", "--context", str(2**40), "--allow-overflow"])
    assert text.returncode == 0 and "DOES NOT FIT" in text.stdout


@pytest.mark.parametrize("context", HUGE_CONTEXTS)
def test_a_sweep_where_nothing_fits_refuses_in_one_line(tmp_path, context):
    output = tmp_path / "sweep.h5"
    done = call_cli(["sweep", "--model", "deepseek-r1", "--context", str(context), "-o", str(output), "-q"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("helix-mpi: error: none of the ")
    assert f"one request's KV cache at {context:,} tokens" in done.stderr and "a shorter --context" in done.stderr
    assert not output.exists()


def test_a_sweep_at_2_40_tokens_times_like_the_model_when_memory_is_unbounded(tmp_path):
    """With (fictional) 10^21 bytes of HBM every configuration fits at 2^40 tokens and batch 4096:
    the sweep's closed forms still agree with analytic.step_time."""
    topology = tmp_path / "huge.toml"
    topology.write_text(TOPOLOGY.read_text().replace("hbm_gb = 186", "hbm_gb = 1e12"))
    spec = sweep.SweepSpec(MODEL_PRESETS["llama-3.1-8b"], load_topology(str(topology)), 2**40, max_gpus=8,
                           max_batch=4096)
    configs = sweep.run_sweep(spec).configs
    assert len(configs) > 0 and configs["batch"].max() == 4096
    for field in ("ttl_s", "tokens_per_s_per_gpu", "memory_bytes"):
        assert np.all(np.isfinite(configs[field])) and np.all(configs[field] > 0)
    picks = np.random.default_rng(1).choice(len(configs), 12, replace=False)
    for row in configs[picks]:
        assert row["ttl_s"] == pytest.approx(_reference_ttl(spec, row), rel=1e-9)


def test_batch_4096_with_per_request_exchanges():
    batch, gpus = 4096, 8
    figures = _model_json(["--model", "llama-3.1-8b", "--gpus", str(gpus), "--kvp", "2", "--tpa", "4", "--batch",
                           str(batch), "--context", "100000", "--layers", "2", "--a2a-chunk", "1", "--allow-overflow"])
    # per layer: qkv, B x (attention, all-to-all), 4 more; per step: LM head, logits gather, sampling
    assert figures["events"] == gpus * (2 * (2 * batch + 5) + 3)
    assert math.isfinite(figures["ttl_s"]) and figures["ttl_s"] > 0
    assert figures["tokens_per_s_per_gpu"] == pytest.approx(batch / figures["ttl_s"] / gpus, rel=1e-12)
    one = _model_json(["--model", "llama-3.1-8b", "--gpus", str(gpus), "--kvp", "2", "--tpa", "4", "--batch", "1",
                       "--context", "100000", "--layers", "2", "--a2a-chunk", "1"])
    assert figures["ttl_s"] > one["ttl_s"]


def test_kvp_larger_than_the_context_leaves_every_shard_but_one_empty(tmp_path):
    """KVP = 8 with no cached context and blocks of 16: all 5 new tokens of both requests land on
    KVP rank 0; the 7 other shards stay empty through every step, and the result is still exact."""
    args = ["--kvp", "8", "--tpa", "1", "--context", "0", "--tokens-per-block", "16", "--steps", "5", "--batch", "2"]
    path = tmp_path / "empty.h5"
    done = run_cli(["run", "-n", "8", *args, "-o", str(path), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["reference_error"] <= REFERENCE_TOLERANCE
    with h5py.File(path, "r") as f:
        kv = f["kv_tokens"][...]
    np.testing.assert_array_equal(kv[:, 1:], 0)
    np.testing.assert_array_equal(kv[:, 0], 2 * np.arange(1, 6))
    analytic = _model_json(["--model", "tiny", "--gpus", "8", "--layers", "2", *args])
    assert analytic["ttl_s"] == summary["ttl_s"]  # empty shards are timed alike


def _max_logit(model_name: str, run: RunConfig) -> float:
    """Largest |q k| / sqrt(D) of layer 0 at the first step, in float64 (the reference's inputs)."""
    model = load_model(model_name)
    tensors = reference_tensors(model, run)
    weights = tensors.weights[0].attn
    x = tensors.x0.astype(np.float64)
    h = x / np.sqrt((x * x).mean(-1, keepdims=True) + model.norm_eps) * weights.attn_norm
    q = _rope((h @ weights.wq).reshape(run.batch, model.num_heads, model.head_dim), run.context, model.rope_theta)
    k = np.repeat(np.asarray(tensors.k_init[0], np.float64), model.num_heads // model.num_kv_heads, axis=1)
    return float(np.abs(np.einsum("bqd,bqsd->bqs", q, k)).max() / math.sqrt(model.head_dim))


FP16_MAX = 65504.0
NEAR_FP16 = ["--batch", "2", "--context", "37", "--steps", "3", "--key-scale", "19500"]


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
def test_logits_at_the_fp16_limit_stay_finite_and_within_tolerance_in_process(storage):
    run = RunConfig(batch=2, context=37, steps=3, layers=2, key_scale=19500.0, storage=storage)
    assert 0.9 * FP16_MAX < _max_logit("tiny", run) < FP16_MAX
    model = load_model("tiny")
    outcome = run_emulation(MPI.COMM_SELF, model, make_layout(model, 1, None, None), run,
                            load_topology("gb200-nvl72"), None, False, True)
    assert np.all(np.isfinite(outcome.result.outputs))
    assert outcome.reference_error <= REFERENCE_TOLERANCE


def test_logits_at_the_fp16_limit_combine_across_8_ranks(tmp_path):
    done = run_cli(["run", "-n", "8", "--kvp", "4", "--tpa", "2", *NEAR_FP16, "-o", str(tmp_path / "t.h5"), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert math.isfinite(summary["reference_error"]) and summary["reference_error"] <= REFERENCE_TOLERANCE
