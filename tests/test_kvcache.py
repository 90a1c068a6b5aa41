"""Round-robin KV placement and the synthetic tensors (one process)."""
from __future__ import annotations

import numpy as np
import pytest

from helix_mpi import synth
from helix_mpi.config import MODEL_PRESETS, Layout
from helix_mpi.kvcache import initial_kv, kvp_owner, owned_positions, tokens_held
from helix_mpi.sharding import full_layer_weights, rank_shard, layer_weights


@pytest.mark.parametrize("end, kvp, block", [(0, 4, 16), (10, 4, 16), (37, 2, 4), (1000, 8, 16), (65, 3, 7)])
def test_tokens_held_matches_placement_and_stays_balanced(end, kvp, block):
    owners = kvp_owner(np.arange(end), block, kvp)
    brute = np.bincount(owners, minlength=kvp)
    held = tokens_held(end, kvp, block)
    np.testing.assert_array_equal(held, brute)
    assert held.sum() == end
    assert held.max() - held.min() <= block  # round robin: ranks differ by at most one block
    for rank in range(kvp):
        assert len(owned_positions(end, rank, kvp, block)) == held[rank]


def test_decode_appends_follow_blocks_of_steps():
    # steps 0..b-1 -> rank 0, next b -> rank 1, ... (docs/design.md section 1, step 2)
    assert list(kvp_owner(np.arange(12), 2, 3)) == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]


def test_shards_equal_slices_of_the_full_tensors_whatever_the_layout():
    model = MODEL_PRESETS["tiny-gqa3"]
    full = full_layer_weights(model, seed=7, layer=1)
    D = model.head_dim
    for layout in (Layout(2, 4, 8), Layout(8, 1, 8), Layout(3, 1, 3)):
        for rank in range(layout.world_size):
            shard = rank_shard(model, layout, rank)
            w = layer_weights(model, 7, 1, shard)
            full_attn, full_ffn = full.attn, full.ffn.mlp
            q, kv, comb, f = shard.q_heads, shard.kv_heads, shard.combine_heads, shard.ffn_cols
            np.testing.assert_array_equal(w.attn.wq, full_attn.wq[:, q.start * D:q.stop * D])
            np.testing.assert_array_equal(w.attn.wk, full_attn.wk[:, kv.start * D:kv.stop * D])
            np.testing.assert_array_equal(w.attn.wo, full_attn.wo[comb.start * D:comb.stop * D])
            np.testing.assert_array_equal(w.ffn.mlp.w_gate, full_ffn.w_gate[:, f.start:f.stop])
            np.testing.assert_array_equal(w.ffn.mlp.w_down, full_ffn.w_down[f.start:f.stop])


def test_combine_heads_tile_all_heads_exactly_once():
    model = MODEL_PRESETS["tiny-gqa3"]
    layout = Layout(4, 2, 8)
    heads = np.concatenate([list(rank_shard(model, layout, r).combine_heads) for r in range(8)])
    np.testing.assert_array_equal(heads, np.arange(model.num_heads))


def test_initial_kv_shard_equals_full_cache_slice():
    positions = owned_positions(40, 1, 3, 4)
    k_full, v_full = initial_kv(3, 0, range(2), 4, 40, 8, range(4), np.arange(40))
    k, v = initial_kv(3, 0, range(1, 2), 4, 40, 8, range(2, 4), positions)
    np.testing.assert_array_equal(k, k_full[1:2, 2:4][:, :, positions])
    np.testing.assert_array_equal(v, v_full[1:2, 2:4][:, :, positions])


def test_synthetic_values_are_uniform_and_seed_dependent():
    a = synth.vector(0, "x", 100000)
    b = synth.vector(1, "x", 100000)
    assert -1.0 <= a.min() and a.max() < 1.0
    assert abs(a.mean()) < 0.01 and abs(a.var() - 1 / 3) < 0.01
    assert not np.array_equal(a, b)


def test_bf16_generation_rounds_exactly_the_float32_values():
    """bf16 storage is generated row by row (no float32 copy of the tensor); its values must stay
    the bf16 rounding of the float32 ones, whatever the shapes (empty, long rows)."""
    from helix_mpi.kernels import to_bf16

    rng = np.random.default_rng(0)
    for rows, length in ((0, 5), (3, 0), (1, 1), (37, 513), (2, 1_100_000)):
        starts = rng.integers(0, 2**40, rows)
        scale, offset = float(rng.normal()), float(rng.normal())
        fp32 = synth.rows(5, "t", starts, length, scale, offset)
        bf16 = synth.rows(5, "t", starts, length, scale, offset, bf16=True)
        assert bf16.dtype == np.uint16 and bf16.shape == fp32.shape == (rows, length)
        np.testing.assert_array_equal(bf16, to_bf16(fp32))


def test_synthetic_values_are_pinned():
    """The generator's values are part of every recorded trace and reference check: a block hashed
    on the generator as first written (SplitMix64 counters, float32, bf16 rounding)."""
    import hashlib

    block = synth.matrix_block(7, "golden", (64, 96), (3, 40), (5, 77), 0.25, 0.5)
    assert hashlib.sha256(block.tobytes()).hexdigest()[:16] == "7a25188ab2174030"
    block = synth.matrix_block(7, "golden", (64, 96), (3, 40), (5, 77), 0.25, 0.5, bf16=True)
    assert hashlib.sha256(block.tobytes()).hexdigest()[:16] == "05e23946d312b914"
