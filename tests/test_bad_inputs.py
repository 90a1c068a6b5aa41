"""Every place a user can type or point: bad input gets one line saying what is wrong, exit 2,
and never a traceback (table-driven)."""
from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from conftest import run_cli



def _topology_text(change):
    """The default topology file with one edit."""
    return change((Path(__file__).resolve().parent.parent / "topologies" / "gb200-nvl72.toml").read_text())


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _trace(tmp_path, name, attrs, with_events=True):
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        if with_events:
            f.create_dataset("events", data=[1, 2, 3])
    return str(path)


# (id, args builder taking tmp_path, expected fragment of the error line)
CASES = [
    # run: flags and layouts (refused before any rank starts)
    ("kvp-not-dividing", lambda t: ["run", "-n", "4", "--kvp", "3"], "--kvp 3 does not divide the 4 ranks"),
    ("tpa-over-k", lambda t: ["run", "-n", "8", "--tpa", "8"], "TPA=8 must divide the 4 KV heads"),
    ("layout-vs-ranks", lambda t: ["run", "-n", "4", "--kvp", "2", "--tpa", "1"], "but the job has 4"),
    ("batch-zero", lambda t: ["run", "-n", "2", "--batch", "0"], "--batch must be an integer >= 1"),
    ("context-negative", lambda t: ["run", "-n", "2", "--context", "-5"], "--context must be an integer >= 0"),
    ("steps-zero", lambda t: ["run", "-n", "2", "--steps", "0"], "--steps must be an integer >= 1"),
    ("layers-too-many", lambda t: ["run", "-n", "2", "--layers", "50"], "exceeds the 4 layers of tiny"),
    ("block-zero", lambda t: ["run", "-n", "2", "--tokens-per-block", "0"], "--tokens-per-block must be"),
    ("seed-negative", lambda t: ["run", "-n", "2", "--seed", "-1"], "--seed must be >= 0"),
    ("np-zero", lambda t: ["run", "-n", "0"], "-n/--np must be >= 1"),
    ("key-scale-infinite", lambda t: ["run", "-n", "2", "--key-scale", "inf"], "--key-scale must be a number in"),
    ("fail-at-garbage", lambda t: ["run", "-n", "2", "--fail-at", "x"], "--fail-at must be STEP:RANK"),
    ("dp-ep-dense", lambda t: ["run", "-n", "2", "--strategy", "dp-ep"], "dp-ep needs an MoE model"),
    ("ep-not-dividing", lambda t: ["run", "-n", "4", "--model", "tiny-mla-moe", "--ep", "3"], "--ep 3 does not divide"),
    ("tp-heads", lambda t: ["run", "-n", "3", "--strategy", "tp"], "TP=3 must divide the 8 query heads"),
    ("mla-tpa", lambda t: ["run", "-n", "2", "--model", "tiny-mla-moe", "--tpa", "2"], "TPA=2 must divide the 1 KV heads"),
    # pipeline stages
    ("pp-without-stages", lambda t: ["run", "-n", "4", "--strategy", "pp"], "--strategy pp needs --pp STAGES"),
    ("pp-not-dividing", lambda t: ["run", "-n", "8", "--strategy", "pp", "--pp", "3"], "--pp 3 must be >= 1 and divide"),
    ("pp-without-strategy", lambda t: ["run", "-n", "4", "--pp", "2"], "pipeline stages need --strategy pp"),
    ("pp-over-layers", lambda t: ["model", "--model", "tiny", "--gpus", "8", "--strategy", "pp", "--pp", "8"],
     "--pp 8 must be in 1..4"),
    ("pp-fewer-layers", lambda t: ["run", "-n", "4", "--strategy", "pp", "--pp", "2", "--layers", "1"],
     "--layers 1 is fewer than the 2 pipeline stages"),
    ("pp-serving-emulated", lambda t: ["run", "-n", "4", "--strategy", "pp", "--pp", "2", "--workload",
                                       "traces/mooncake_conversation_sample.jsonl"],
     "run --workload under pipeline stages (--strategy pp) is not emulated: serve the trace analytically"),
    ("precision-choice", lambda t: ["run", "--precision", "fp16"], "'fp16' is not one of 'fp4', 'fp8', 'fp8_block', 'bf16'"),
    ("unknown-option", lambda t: ["model", "--gpu", "8"], "No such option '--gpu'"),
    ("a2a-chunk-negative", lambda t: ["model", "--a2a-chunk", "-1"], "--a2a-chunk must be an integer >= 0"),
    # models
    ("model-unknown", lambda t: ["run", "-n", "2", "--model", "llama-3.1-8"], "did you mean 'llama-3.1-8b'"),
    ("model-missing-file", lambda t: ["run", "-n", "2", "--model", str(t / "none.toml")], "none.toml: no such file"),
    ("model-mistyped-path", lambda t: ["run", "-n", "2", "--model", "nosuch/config.json"],
     "model file nosuch/config.json: no such file"),
    ("model-missing-folder", lambda t: ["model", "--model", str(t / "llama-dir")], "llama-dir: no such file"),
    ("model-bad-toml", lambda t: ["run", "-n", "2", "--model", _write(t, "m.toml", "hidden_size = [")],
     "not valid TOML"),
    ("model-unknown-field", lambda t: ["run", "-n", "2", "--model", _write(
        t, "m.toml", "hidden_size = 64\nnum_attention_heads = 4\nintermediate_size = 64\nnum_hiden_layers = 2\n")],
     "did you mean 'num_hidden_layers'"),
    ("model-missing-field", lambda t: ["run", "-n", "2", "--model", _write(
        t, "m.toml", "hidden_size = 64\nnum_attention_heads = 4\nintermediate_size = 64\n")],
     "missing field 'num_hidden_layers'"),
    ("model-negative", lambda t: ["run", "-n", "2", "--model", _write(
        t, "m.toml", "hidden_size = 64\nnum_attention_heads = 4\nintermediate_size = -8\nnum_hidden_layers = 2\n")],
     "ffn_size must be a positive integer"),
    ("model-bad-json", lambda t: ["run", "-n", "2", "--model", _write(t, "config.json", "{\"hidden_size\": ")],
     "not valid JSON"),
    ("model-bad-moe", lambda t: ["model", "--model", _write(
        t, "config.json", '{"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 64, '
        '"num_hidden_layers": 2, "n_routed_experts": 4, "num_experts_per_tok": 9, "moe_intermediate_size": 8}')],
     "experts per token must be in 1..4"),
    # topologies
    ("topology-unknown", lambda t: ["model", "--topology", "gb2000"], "gb2000"),
    ("topology-missing-key", lambda t: ["model", "--topology", _write(t, "t.toml", _topology_text(
        lambda s: s.replace("hbm_gb_per_s = 8000", "")))], "hbm_gb_per_s"),
    ("topology-negative-bw", lambda t: ["model", "--topology", _write(t, "t.toml", _topology_text(
        lambda s: s.replace("link_gb_per_s = 900", "link_gb_per_s = -900")))], "link_gb_per_s"),
    ("topology-zero-hbm", lambda t: ["model", "--topology", _write(t, "t.toml", _topology_text(
        lambda s: s.replace("hbm_gb = 186", "hbm_gb = 0")))], "hbm_gb"),
    ("topology-wrong-type", lambda t: ["model", "--topology", _write(t, "t.toml", _topology_text(
        lambda s: s.replace("domain_size = 72", 'domain_size = "72"')))], "domain_size"),
    ("topology-unknown-field", lambda t: ["model", "--topology", _write(t, "t.toml", _topology_text(
        lambda s: s.replace("nvls_available", "nvls_availabel")))], "nvls_available"),
    ("topology-syntax", lambda t: ["model", "--topology", _write(t, "t.toml", "name = \n")], "t.toml"),
    # model / collectives flags
    ("gpus-zero", lambda t: ["model", "--gpus", "0"], "--gpus must be >= 1"),
    ("model-kvp", lambda t: ["model", "--gpus", "8", "--kvp", "3"], "does not divide the 8 ranks"),
    ("sizes-garbage", lambda t: ["collectives", "--sizes", "12Q"], "cannot parse size '12Q'"),
    ("ranks-zero", lambda t: ["collectives", "--ranks", "0"], "--ranks must be >= 1"),
    ("nvls-beyond-domain", lambda t: ["collectives", "--topology", "dgx-h100", "--ranks", "16", "--algorithm", "nvls"],
     "NVLS"),
    # trace files
    ("trace-missing", lambda t: ["summarize", str(t / "none.h5")], "no such file"),
    ("trace-not-hdf5", lambda t: ["summarize", _write(t, "x.h5", b"plain text, not HDF5")], "not an HDF5 file"),
    ("trace-no-schema", lambda t: ["summarize", _trace(t, "s.h5", {"complete": True})], "schema_version"),
    ("trace-future-schema", lambda t: ["summarize", _trace(t, "f.h5", {"schema_version": 99, "complete": True})],
     "schema version 99"),
]


@pytest.mark.parametrize("case_id, make_args, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path, case_id, make_args, fragment):
    done = run_cli([*make_args(tmp_path)], timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("helix-mpi: error:") and fragment in lines[0], lines[0]


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30
