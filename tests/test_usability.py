"""What a new user meets first: defaults that tell the truth, does-not-fit said loudly, sizes with
suffixes, the model presets listed, and output rows that mean what they say (issue 14)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import run_cli
from helix_mpi import units
from helix_mpi.cli import cli, default_layers, layer_kinds_note
from helix_mpi.config import MODEL_PRESETS, load_model, make_layout, parameter_count
from helix_mpi.layouts import choose_layout
from helix_mpi.memory import memory_report
from helix_mpi.topology import load_topology

TOPO = load_topology("gb200-nvl72")


def _invoke(args):
    return CliRunner().invoke(cli, args)


# --- sizes with suffixes -------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("1M", 1_000_000), ("128K", 128_000), ("128Ki", 131_072), ("4096", 4096),
                                         ("1.5M", 1_500_000), ("1,000,000", 1_000_000), ("2Mi", 2 * 1024 ** 2),
                                         ("1g", 1_000_000_000)])
def test_token_counts_take_decimal_and_binary_suffixes(text, value):
    assert units.parse_count(text) == value
    assert units.parse_count(units.format_count(value)) == value


@pytest.mark.parametrize("text", ["1.5", "12Q", "M", "0.0001K", ""])
def test_bad_token_counts_are_refused(text):
    with pytest.raises(ValueError):
        units.parse_count(text)


def test_context_1m_is_one_million_tokens_everywhere():
    model = _invoke(["model", "--model", "llama-3.1-8b", "--gpus", "8", "--context", "1M", "--json"])
    assert model.exit_code == 0, model.output
    assert json.loads(model.stdout)["context"] == 1_000_000
    bad = run_cli(["model", "--context", "1.5"], timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("helix-mpi: error:") and "--context" in bad.stderr


# --- model presets -------------------------------------------------------------------------------
def test_models_lists_every_preset_with_its_shape():
    result = _invoke(["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(MODEL_PRESETS)
    r1 = rows["deepseek-r1"]
    assert 660e9 < r1["params"] < 680e9  # 671B
    assert r1["attention"]["type"] == "MLA" and r1["moe"]["routed_experts"] == 256 and r1["layers"] == 61
    assert r1["moe"]["first_dense_layers"] == 3 and r1["vocab"] == 129280
    assert rows["llama-3.1-405b"]["attention"] == {"type": "GQA", "heads": 128, "kv_heads": 8, "head_dim": 128}
    assert 400e9 < rows["llama-3.1-405b"]["params"] < 410e9 and rows["llama-3.1-405b"]["moe"] is None
    text = _invoke(["models"]).output
    for name in MODEL_PRESETS:
        assert name in text
    assert "671B" in text and "406B" in text


def test_parameter_count_of_a_dense_model_by_hand():
    tiny = MODEL_PRESETS["tiny"]  # H 64, Q 8, K 4, D 16, F 96, 4 layers, vocab 256
    per_layer = 64 * (8 + 2 * 4) * 16 + 8 * 16 * 64 + 3 * 64 * 96
    assert parameter_count(tiny) == 4 * per_layer + 2 * 256 * 64


# --- defaults that tell the truth ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "small", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "qwen3-32b"])
def test_default_helix_layout_on_8_ranks_has_kvp_at_least_2(name):
    model = MODEL_PRESETS[name]
    choice = choose_layout(model, 8, "helix", 1, 256, TOPO)
    assert choice.layout.kvp >= 2 and choice.layout.kvp * choice.layout.tpa == 8
    # it is the fastest of the candidates that fit, and every candidate is Helix proper
    ttls = [ttl for layout, ttl, fits in choice.ranked if fits]
    assert ttls[0] == min(ttls) and all(layout.kvp >= 2 for layout, _, _ in choice.ranked)


def test_chosen_layout_is_the_fastest_by_the_model_command():
    args = ["model", "--model", "deepseek-r1", "--gpus", "16", "--context", "200K", "--batch", "4", "--json"]
    chosen = json.loads(_invoke(args).stdout)
    candidates = chosen["layout_choice"]["candidates"]
    assert len(candidates) > 1 and "fastest" in chosen["layout_choice"]["reason"]
    for cand in candidates:  # each candidate timed by `model` itself: the chosen one is the fastest
        lay = cand["layout"]
        data = json.loads(_invoke([*args, "--kvp", str(lay["kvp"]), "--tpa", str(lay["tpa"]),
                                   "--ep", str(lay["ep"])]).stdout)
        assert data["ttl_s"] == pytest.approx(cand["ttl_s"], rel=1e-9)
        assert data["ttl_s"] >= chosen["ttl_s"] * (1 - 1e-12)


def test_model_prints_which_layout_and_why():
    result = _invoke(["model", "--model", "llama-3.1-70b", "--gpus", "8", "--context", "100K"])
    lines = result.output.splitlines()
    assert lines[1].startswith("layout: KVP=") and "fastest of" in lines[1] and "analytic model" in lines[1]


def test_model_sweep_and_advise_share_defaults():
    def defaults(name):
        return {p.name: p.default for p in cli.commands[name].params}

    model, sweep, advise = defaults("model"), defaults("sweep"), defaults("advise")
    assert model["model_spec"] == sweep["model_spec"] == advise["model_spec"] == "deepseek-r1"
    assert model["context"] == sweep["context"] == units.parse_count(advise["context"]) == 1_000_000
    assert model["topology"] == sweep["topology"] == advise["topology"]
    assert model["precision"] == sweep["precision"] == advise["precision"]
    assert model["a2a_chunk"] == sweep["a2a_chunk"] == advise["a2a_chunk"] == 0


def test_default_layers_include_every_kind_of_layer():
    r1 = MODEL_PRESETS["deepseek-r1"]  # first 3 dense
    assert default_layers(r1, host_bytes=1e12) == (4, None) and r1.is_moe_layer(3)
    assert default_layers(MODEL_PRESETS["tiny"])[0] == 2 and default_layers(MODEL_PRESETS["tiny-mla-moe"]) == (2, None)
    assert layer_kinds_note(r1, 4) is None
    note = layer_kinds_note(r1, 2)
    assert "all dense" in note and "58 MoE layers" in note and "--layers 4" in note


def test_default_layers_stay_dense_when_a_moe_layer_would_not_fit_in_host_memory():
    r1 = MODEL_PRESETS["deepseek-r1"]  # one MoE layer: 256 experts x 3 x 7168 x 2048 weights, 45 GB in fp32
    layers, why = default_layers(r1, "fp32", host_bytes=24 * 2**30)
    assert layers == 2 and "4 layers (one MoE) would need" in why and "this machine has 26 GB" in why
    assert default_layers(r1, "bf16", host_bytes=64e9)[0] == 4  # 23 GB in bf16: fits in half of 64 GB
    note = layer_kinds_note(r1, layers, why)
    assert note.startswith("the 2 emulated layers are all dense (4 layers (one MoE) would need")


def test_run_says_when_the_emulated_layers_miss_a_kind(tmp_path):
    done = run_cli(["run", "-n", "2", "--model", "tiny-mla-moe", "--layers", "1", "--steps", "1", "--json",
                    "-o", str(tmp_path / "t.h5")])
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("all dense" in note for note in data["notes"])
    assert "helix-mpi: note: the 1 emulated layers are all dense" in done.stderr


# --- does not fit: loud ------------------------------------------------------------------------
def test_model_that_does_not_fit_says_so_first_and_exits_3():
    args = ["model", "--model", "deepseek-r1", "--strategy", "tp", "--gpus", "8", "--batch", "32"]
    done = run_cli(args, timeout=120)
    assert done.returncode == 3, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("DOES NOT FIT: tp on 8 GPUs") and "of 186 GB HBM" in first
    assert "at most 3 requests fit" in first  # (186 - weights) / KV of one 1M-token request
    allowed = run_cli([*args, "--allow-overflow"], timeout=120)
    assert allowed.returncode == 0 and allowed.stdout.startswith("DOES NOT FIT")
    as_json = run_cli([*args, "--json"], timeout=120)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["fits"] is False
    assert as_json.stderr.startswith("helix-mpi: DOES NOT FIT")


def test_the_largest_batch_said_to_fit_does_fit():
    model = MODEL_PRESETS["deepseek-r1"]
    layout = make_layout(model, 8, None, None, "tp")
    assert memory_report(model, layout, 3, 1_000_001, "fp4", TOPO, 16, "fp8")["fits"]
    assert not memory_report(model, layout, 4, 1_000_001, "fp4", TOPO, 16, "fp8")["fits"]


def test_run_that_does_not_fit_is_refused_before_any_rank_starts(tmp_path):
    out = tmp_path / "t.h5"
    done = run_cli(["run", "-n", "8", "--model", "small", "--strategy", "tp", "--batch", "4096", "--context", "1M",
                    "-o", str(out)], timeout=120)
    assert done.returncode == 3
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("helix-mpi: DOES NOT FIT") and "--allow-overflow" in lines[0]
    assert not out.exists() and "ranks up" not in done.stderr


def test_sweep_says_why_a_strategy_has_nothing_that_fits(tmp_path):
    args = ["sweep", "--model", "llama-3.1-405b", "--max-gpus", "3", "--context", "200000", "--max-batch", "8",
            "-o", str(tmp_path / "s.h5")]
    result = _invoke(args + ["--json"])
    assert result.exit_code == 0, result.output
    series = json.loads(result.stdout.strip().splitlines()[-1])["series"]
    assert series["helix"]["configs"] > 0  # KVP-only replicates the weights per KVP rank: 3 GPUs are too few
    assert "nothing fits in 186 GB" in series["kvp"]["why_none"]
    assert "dense" in series["dp-ep"]["why_none"]
    text = _invoke(args).output
    assert "none: nothing fits" in text


# --- output rows that mean what they say --------------------------------------------------------
def test_exposed_communication_never_exceeds_communication():
    data = json.loads(_invoke(["model", "--model", "deepseek-r1", "--strategy", "dp-ep", "--batch", "3",
                               "--json"]).stdout)
    assert data["exposed_comm_s"] <= data["comm_busy_s"] * (1 + 1e-12)
    assert data["hidden_comm_s"] >= 0 and data["waiting_s"] > 0  # 3 requests on 8 ranks: 5 wait
    total = data["compute_busy_s"] + data["exposed_comm_s"] + data["waiting_s"]
    assert total == pytest.approx(data["step_time_s"], rel=1e-9)


def test_no_duplicate_or_one_rank_collective_rows():
    data = json.loads(_invoke(["model", "--model", "deepseek-r1", "--gpus", "64", "--kvp", "64", "--tpa", "1",
                               "--ep", "64", "--batch", "4", "--json"]).stdout)  # TPF = 1
    names = [row["name"] for row in data["ops"]]
    assert len(names) == len(set(names))
    assert all(row.get("group_size", 2) > 1 for row in data["ops"])
    tp = json.loads(_invoke(["model", "--strategy", "tp", "--batch", "1", "--json"]).stdout)
    reduce_ffn = [row["name"] for row in tp["ops"] if row["op"] == "all_reduce_ffn"]
    assert sorted(reduce_ffn) == ["all_reduce_ffn[tpf*ep]", "all_reduce_ffn[tpf]"]  # dense and MoE layers


@pytest.mark.parametrize("args, shown, hidden", [
    (["--strategy", "tp"], None, "HOP-B"),
    (["--strategy", "dp-ep"], None, "HOP-B"),
    (["--kvp", "8", "--tpa", "1"], "one all-to-all per layer for the batch", "HOP-B"),
    (["--kvp", "8", "--tpa", "1", "--a2a-chunk", "1"], "one all-to-all per request, HOP-B on", None),
    (["--kvp", "8", "--tpa", "1", "--a2a-chunk", "1", "--no-hopb"], "HOP-B off", None),
])
def test_hopb_is_shown_only_where_there_is_an_all_to_all(args, shown, hidden):
    header = _invoke(["model", "--batch", "2", *args]).output.splitlines()[0]
    if shown:
        assert shown in header
    if hidden:
        assert hidden not in header


def test_model_step_time_is_not_called_emulated():
    text = _invoke(["model", "--model", "llama-3.1-8b", "--gpus", "8", "--context", "8K"]).output
    assert "modeled step time (all 32 layers)" in text and "emulated" not in text


def test_reference_check_skipped_is_said(monkeypatch, tmp_path):
    from mpi4py import MPI

    from helix_mpi import runner
    from helix_mpi.cli import Resolved, _print_run
    from helix_mpi.config import RunConfig

    monkeypatch.setattr("helix_mpi.hostmem.AUTO_CHECK_MAX_BYTES", 0)
    model = load_model("tiny")
    layout = make_layout(model, 1, None, None)
    run = RunConfig(steps=1, layers=1)
    outcome = runner.run_emulation(MPI.COMM_SELF, model, layout, run, TOPO, tmp_path / "t.h5")
    assert outcome.reference_error is None and "--check" in outcome.summary["reference_skipped"]
    lines = []
    monkeypatch.setattr("helix_mpi.cli.click.echo", lambda text, **kw: lines.append(text))
    _print_run(outcome, Resolved(model, layout, run, TOPO), as_json=False)
    assert any(line.startswith("reference check: skipped: the unsharded float64 reference would need")
               for line in lines[0].splitlines())

