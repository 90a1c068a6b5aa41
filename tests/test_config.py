"""Config, layout validation and model loading (one process)."""
from __future__ import annotations

import json

import pytest

from helix_mpi.config import (MODEL_PRESETS, ConfigError, Layout, RunConfig, default_layout, load_model,
                              make_layout, validate_layout)


def test_presets_have_public_shapes():
    m = MODEL_PRESETS["llama-3.1-405b"]
    assert (m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.ffn_size, m.num_layers) == \
        (16384, 128, 8, 128, 53248, 126)
    assert MODEL_PRESETS["llama-3.1-70b"].num_layers == 80
    assert MODEL_PRESETS["llama-3.1-8b"].hidden_size == 4096


@pytest.mark.parametrize("world, expected", [(1, (1, 1)), (8, (2, 4)), (6, (3, 2)), (3, (3, 1)), (16, (4, 4))])
def test_default_layout_takes_largest_tpa_dividing_k_and_n(world, expected):
    layout = default_layout(MODEL_PRESETS["tiny"], world)  # K = 4
    assert (layout.kvp, layout.tpa) == expected and layout.tpf == world


@pytest.mark.parametrize("kvp, tpa, world, message", [
    (2, 2, 8, "= 4 ranks but the job has 8"),
    (1, 8, 8, "TPA=8 must divide the 4 KV heads"),
    (3, 3, 9, "TPA=3 must divide"),
    (16, 1, 16, "at least one of the 8 query heads"),
])
def test_invalid_layouts_are_refused_with_one_line(kvp, tpa, world, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_layout(MODEL_PRESETS["tiny"], Layout(kvp, tpa, kvp * tpa), world)
    assert "\n" not in str(info.value)


def test_make_layout_completes_missing_flag():
    tiny = MODEL_PRESETS["tiny"]
    assert make_layout(tiny, 8, 4, None) == Layout(4, 2, 8)
    assert make_layout(tiny, 8, None, 1) == Layout(8, 1, 8)
    with pytest.raises(ConfigError, match="does not divide the 8 ranks"):
        make_layout(tiny, 8, 3, None)


def test_hf_config_json_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
                                "intermediate_size": 512, "num_hidden_layers": 3, "rope_theta": 1e4,
                                "rms_norm_eps": 1e-6, "vocab_size": 1000, "torch_dtype": "bfloat16"}))
    m = load_model(str(path))
    assert (m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.ffn_size) == (256, 8, 2, 32, 512)
    assert m.norm_eps == 1e-6
    assert load_model(str(tmp_path)) == m  # a model folder holding its config.json


def test_a_mistyped_model_path_says_no_such_file_not_unknown_model():
    for spec in ("nosuch/config.json", "nosuch/model.toml", "missing.json", "./nosuch"):
        with pytest.raises(ConfigError, match=f"model file {spec}: no such file"):
            load_model(spec)


@pytest.mark.parametrize("text, message", [
    ("hidden_size = 64\nnum_attention_heads = 4\nintermediate_size = 9\nnum_hidden_layer = 2\n",
     "unknown field 'num_hidden_layer' \\(did you mean 'num_hidden_layers'"),
    ("hidden_size = 64\nnum_attention_heads = 4\nintermediate_size = 9\n", "missing field 'num_hidden_layers'"),
    ("hidden_size = 64\nnum_attention_heads = 4\nnum_key_value_heads = 3\nintermediate_size = 9\n"
     "num_hidden_layers = 1\n", "not a multiple of KV heads"),
    ("hidden_size = -64\nnum_attention_heads = 4\nintermediate_size = 9\nnum_hidden_layers = 1\nhead_dim = 8\n",
     "hidden_size must be a positive integer"),
    ("hidden_size = [\n", "not valid TOML"),
])
def test_bad_model_files_get_one_clear_line(tmp_path, text, message):
    path = tmp_path / "model.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_model(str(path))
    assert "\n" not in str(info.value)


def test_unknown_preset_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'llama-3.1-8b'"):
        load_model("llama-3.1-8")


@pytest.mark.parametrize("kwargs", [{"batch": 0}, {"context": -1}, {"precision": "fp16"}, {"steps": 0}])
def test_bad_run_config(kwargs):
    with pytest.raises(ConfigError):
        RunConfig(**kwargs)


def test_pipeline_layout_lays_out_each_stage_and_keeps_groups_inside_it():
    import numpy as np

    from helix_mpi.axes import ATTENTION_AXES, FFN_AXES, Axis
    from helix_mpi.config import Implementation, Strategy
    from helix_mpi.mesh import coordinates, group_colors
    from helix_mpi.plan import OpName, layer_plan
    from helix_mpi.sharding import rank_shard
    from helix_mpi.strategies import rules_for

    tiny = MODEL_PRESETS["tiny"]
    layout = make_layout(tiny, 8, 2, 2, "pp", pp=2)  # two stages of Helix KVP=2 x TPA=2
    assert (layout.kvp, layout.tpa, layout.tpf, layout.ep, layout.pp, layout.world_size) == (2, 2, 4, 1, 2, 8)
    stage = rules_for(layout).stage_layout(layout)
    assert stage.strategy is Strategy.HELIX and stage.world_size == 4
    assert make_layout(tiny, 8, None, None, "pp", pp=4).tpa == 2  # TP inside a stage without --kvp
    for axes in (ATTENTION_AXES, FFN_AXES, (Axis.KVP,)):
        colors = group_colors(layout, axes)
        assert not set(colors[:4]) & set(colors[4:]), axes  # no group spans two stages
    assert coordinates(layout, 6) == coordinates(stage, 2)
    assert rank_shard(tiny, layout, 6).q_heads == rank_shard(tiny, stage, 2).q_heads
    kv, impl = np.array([5, 5]), Implementation()
    assert layer_plan(tiny, layout, 6, 0, kv, impl, True) == []  # layers 0-1 are stage 0's
    first = layer_plan(tiny, layout, 6, 2, kv, impl, True)
    assert first[0].name is OpName.STAGE_RECV and first[0].peer == 2 and first[1].deps == (0,)
    last = layer_plan(tiny, layout, 2, 1, kv, impl, True)
    assert last[-1].name is OpName.STAGE_SEND and last[-1].peer == 6 and last[-1].nbytes == 2 * 64 * 2
    assert not any(op.is_stage_transfer for op in layer_plan(tiny, layout, 2, 0, kv, impl, True))
