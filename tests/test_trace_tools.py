"""Trace tools on real traces of small mpiexec runs: summarize, compare, timeline, export,
replay, validate; and one clear line with exit code 2 for every bad file from every command."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli
import dataclasses

from helix_mpi.analysis import layout_from_dict, run_config_from_dict, shape_of, summarize, summarize_trace
from helix_mpi.cli import cli
from helix_mpi.config import MODEL_PRESETS, ModelConfig
from helix_mpi.plan import layer_plan, tail_plan
from helix_mpi.timing import TimeModel
from helix_mpi.topology import load_topology
from helix_mpi.trace import TraceWriter

# tiny model (Q=8, K=4, D=16, 4 layers) on 4 ranks as KVP=2 x TPA=2, so the all-to-all is real.
RUN_ARGS = ["--kvp", "2", "--tpa", "2", "--batch", "3", "--context", "40", "--steps", "3", "--layers", "2",
            "--tokens-per-block", "4", "--precision", "fp4", "--a2a-chunk", "1"]  # per request: HOP-B matters
COMMANDS = {  # command line of each trace command with BAD in place of the trace under test
    "summarize": ["summarize", "BAD"],
    "compare-a": ["compare", "BAD", "GOOD"],
    "compare-b": ["compare", "GOOD", "BAD"],
    "timeline": ["timeline", "BAD", "-o", "OUT.png"],
    "export": ["export", "BAD", "--format", "chrome", "-o", "OUT.json"],
    "replay": ["replay", "BAD", "-o", "OUT.h5"],
    "validate": ["validate", "BAD"],
}


def _run(tmp: Path, name: str, *extra: str) -> tuple[Path, dict]:
    path = tmp / f"{name}.h5"
    done = run_cli(["run", "-n", "4", *RUN_ARGS, *extra, "-o", str(path), "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    return path, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Two real 4-rank runs: HOP-B on (a) and off (b)."""
    tmp = tmp_path_factory.mktemp("trace_tools")
    a, run_a = _run(tmp, "hopb")
    b, run_b = _run(tmp, "no_hopb", "--no-hopb")
    return {"a": a, "b": b, "run_a": run_a, "run_b": run_b}


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _events(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["events"][...]


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("helix-mpi: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- summarize -------------------------------------------------------------------------------
def test_summarize_json_and_text(traces):
    data = json.loads(invoke("summarize", traces["a"], "--json").stdout)
    assert data["ttl_s"] == traces["run_a"]["ttl_s"]  # same step ends, same arithmetic as the run
    assert {"ttl_s", "tokens_per_s_per_user", "tokens_per_s_per_gpu"} <= set(data)
    assert data["tokens_per_s_per_gpu"] == pytest.approx(3 / data["ttl_s"] / 4)
    assert data["strategy"] == "helix" and data["precision"] == "fp4" and data["events"] == len(_events(traces["a"]))
    kinds = {(c["collective"], c["group_size"]) for c in data["collectives"]}
    assert ("all_to_all", 2) in kinds and ("all_reduce", 4) in kinds
    assert all(c["busbw_gbps"] > 0 and c["algbw_gbps"] > 0 for c in data["collectives"])
    # KV bytes: 2 * K_local(4/2) * D(16) * 1 B (FP8 cache, the default) per token per layer, 4 layers
    kv = data["kv"]
    assert kv["bytes_per_token_per_layer"] == 64.0
    assert kv["bytes_per_rank"] == [t * 64.0 * 4 for t in kv["tokens_per_rank"]]
    assert kv["imbalance_max_over_mean"] == pytest.approx(max(kv["tokens_per_rank"]) / np.mean(kv["tokens_per_rank"]))
    text = invoke("summarize", traces["a"]).stdout
    for needle in ("token-to-token latency", "tokens/s/GPU", "exposed", "busbw GB/s", "KV cache per rank",
                   "host wall time", "all_to_all"):
        assert needle in text


@pytest.mark.parametrize("by, count", [("layer", 3), ("rank", 4), ("step", 3)])  # 2 layers, then the tail
def test_summarize_by(traces, by, count):
    data = json.loads(invoke("summarize", traces["a"], "--by", by, "--json").stdout)
    rows = data["by"]["rows"]
    assert [row[by] for row in rows] == list(range(count))
    assert sum(row["events"] for row in rows) == data["events"]
    if by == "step":
        assert np.mean([row["step_time_s"] for row in rows]) == pytest.approx(data["step_time_s"])
    if by == "rank":
        assert [row["kv_tokens"] for row in rows] == data["kv"]["tokens_per_rank"]
    assert by in invoke("summarize", traces["a"], "--by", by).stdout


def test_streamed_summary_equals_in_memory_summary(traces):
    events = _events(traces["a"])
    in_memory = summarize(events, shape_of(4, 3, 2, MODEL_PRESETS["tiny"]))
    streamed = summarize_trace(traces["a"], chunk=7)  # many tiny chunks
    assert streamed["ttl_s"] == in_memory["ttl_s"] and streamed["steps"] == in_memory["steps"]
    for a, b in zip(in_memory["ops"], streamed["ops"]):
        assert (a["op"], a["count"]) == (b["op"], b["count"])
        assert a["seconds_per_step"] == pytest.approx(b["seconds_per_step"], rel=1e-12)
    assert streamed["compute_busy_s"] == pytest.approx(in_memory["compute_busy_s"], rel=1e-12)


def test_summarize_shows_memory_and_strategy(traces, tmp_path):
    path = tmp_path / "memory.h5"
    shutil.copy(traces["a"], path)
    memory = {"per_rank": [{"rank": r, "weights_bytes": 1e9, "kv_bytes": 2e9 + r} for r in range(4)],
              "hbm_bytes": 186e9, "fits": True}
    with h5py.File(path, "a") as f:
        f.attrs["memory"] = json.dumps(memory)
        config = json.loads(f.attrs["config"])
        config["strategy"] = "tp"
        f.attrs["config"] = json.dumps(config)
    data = json.loads(invoke("summarize", path, "--json").stdout)
    assert data["strategy"] == "tp" and data["memory"]["max_total_bytes"] == 1e9 + 2e9 + 3
    text = invoke("summarize", path).stdout
    assert "tp on 4 ranks" in text and "memory per rank" in text and "fits" in text


# --- compare ---------------------------------------------------------------------------------
def test_compare_hopb_on_vs_off(traces):
    data = json.loads(invoke("compare", traces["a"], traces["b"], "--json").stdout)
    assert data["ratios"]["ttl_s"] == pytest.approx(traces["run_b"]["ttl_s"] / traces["run_a"]["ttl_s"])
    assert data["ratios"]["ttl_s"] > 1  # without HOP-B the all-to-alls are exposed
    assert data["config"]["hopb"] == {"a": True, "b": False, "same": False}
    assert data["ratios"]["compute_busy_s"] == pytest.approx(1.0)
    text = invoke("compare", traces["a"], traces["b"]).stdout
    assert "<- differs" in text and "B/A" in text and "A faster" in text


# --- timeline ----------------------------------------------------------------------------------
def test_timeline_png(traces, tmp_path):
    out = tmp_path / "t.png"
    result = invoke("timeline", traces["a"], "-o", out, "--steps", "0-1", "--layers", "1", "--ranks", "0,2")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    ops_per_layer = 1 + 2 * 3 + 4
    assert f"timeline of {2 * 2 * ops_per_layer} events" in result.stdout


def test_timeline_refuses_bad_ranges(traces, tmp_path):
    assert "--ranks" in _error_line(invoke("timeline", traces["a"], "-o", tmp_path / "t.png", "--ranks", "1-x",
                                           ok=False))
    line = _error_line(invoke("timeline", traces["a"], "-o", tmp_path / "t.png", "--steps", "7", ok=False))
    assert "outside the trace" in line and "0-2" in line
    assert not (tmp_path / "t.png").exists()


# --- Chrome / Perfetto export ---------------------------------------------------------------------
def _check_nesting(track: list[dict]) -> None:
    """On one track, events are nested or disjoint, never partially overlapping (integer ns)."""
    stack: list[int] = []
    for event in sorted(track, key=lambda e: (round(e["ts"] * 1000), -round(e["dur"] * 1000))):
        start, end = round(event["ts"] * 1000), round((event["ts"] + event["dur"]) * 1000)
        while stack and stack[-1] <= start:
            stack.pop()
        assert not stack or end <= stack[-1], f"partial overlap at {event}"
        stack.append(end)


def test_chrome_export_structure(traces, tmp_path):
    out = tmp_path / "trace.json"
    invoke("export", traces["a"], "--format", "chrome", "-o", out)
    document = json.loads(out.read_text())
    events = document["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    rows = _events(traces["a"])
    assert len(complete) == len(rows) and {e["ph"] for e in events} == {"X", "M"}
    names = {(e["pid"], e["name"], e["tid"]): e["args"] for e in meta}
    for rank in range(4):
        assert names[(rank, "process_name", 0)] == {"name": f"rank {rank}"}
        assert names[(rank, "thread_name", 0)] == {"name": "compute"}
        assert names[(rank, "thread_name", 1)] == {"name": "comm"}
    by_key = {(int(r["rank"]), int(r["step"]), int(r["layer"]), int(r["index"])): r for r in rows}
    for event in complete:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(event)
        assert isinstance(event["ts"], float) and event["dur"] >= 0
        args = event["args"]
        row = by_key[(event["pid"], args["step"], args["layer"], args["index"])]
        assert event["name"] == row["op"].decode() and event["tid"] == (1 if row["stream"] == b"comm" else 0)
        assert event["ts"] == pytest.approx(row["start_s"] * 1e6, abs=1e-3)  # microseconds, ns resolution
        assert event["dur"] == pytest.approx((row["end_s"] - row["start_s"]) * 1e6, abs=2e-3)
        assert args["bytes"] == row["bytes"]
        assert ("collective" in args) == bool(row["collective"])
    for track in {(e["pid"], e["tid"]) for e in complete}:
        _check_nesting([e for e in complete if (e["pid"], e["tid"]) == track])


def test_chrome_export_selection_and_host_clock(traces, tmp_path):
    out = tmp_path / "host.json"
    invoke("export", traces["a"], "-o", out, "--ranks", "1", "--steps", "2", "--clock", "host")
    document = json.loads(out.read_text())
    complete = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in complete} == {1} and {e["args"]["step"] for e in complete} == {2}
    assert document["otherData"]["clock"] == "host"


# --- replay -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["--topology", "gb200-nvl72", "--hopb"]])
def test_replay_onto_own_topology_reproduces_modeled_times(traces, tmp_path, args):
    out = tmp_path / "same.h5"
    data = json.loads(invoke("replay", traces["a"], *args, "-o", out, "--json").stdout)
    assert data["ttl_s"] == data["source_ttl_s"] == traces["run_a"]["ttl_s"]
    before, after = _events(traces["a"]), _events(out)
    np.testing.assert_array_equal(after, before)  # every field, times bit for bit
    with h5py.File(out, "r") as f, h5py.File(traces["a"], "r") as src:
        assert bool(f.attrs["complete"]) and json.loads(f.attrs["replayed_from"])["topology"] == "gb200-nvl72"
        np.testing.assert_array_equal(f["kv_tokens"][...], src["kv_tokens"][...])
    assert invoke("validate", out).stdout.startswith("OK")


@pytest.mark.parametrize("source, flag, expected", [("a", "--no-hopb", "b"), ("b", "--hopb", "a")])
def test_replay_switching_hopb_matches_the_emulated_run(traces, tmp_path, source, flag, expected):
    out = tmp_path / "switched.h5"
    invoke("replay", traces[source], flag, "-o", out)
    replayed, emulated = _events(out), _events(traces[expected])
    for field in ("start_s", "end_s", "dep0", "dep1"):
        np.testing.assert_array_equal(replayed[field], emulated[field])
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["run"]["hopb"] == (flag == "--hopb")


@pytest.mark.parametrize("args, topology, nvlink, hbm", [
    (["--nvlink-scale", "2", "--hbm-scale", "3"], "gb200-nvl72", 2.0, 3.0),
    (["--topology", "dgx-h100"], "dgx-h100", 1.0, 1.0),
])
def test_replay_retimes_every_op_with_the_cost_model(traces, tmp_path, args, topology, nvlink, hbm):
    out = tmp_path / "what_if.h5"
    data = json.loads(invoke("replay", traces["a"], *args, "-o", out, "--json").stdout)
    topo = load_topology(topology)
    events = _events(out)
    with h5py.File(traces["a"], "r") as f:
        config = json.loads(f.attrs["config"])
    model, run = ModelConfig.from_dict(config["model"]), run_config_from_dict(config["run"])
    layout, impl = layout_from_dict(config["layout"]), run.implementation()
    timer = TimeModel(topo, impl, hbm_scale=hbm, nvlink_scale=nvlink)
    for key in {(int(r["step"]), int(r["layer"]), int(r["rank"])) for r in events[:300]}:
        rows = events[(events["step"] == key[0]) & (events["layer"] == key[1]) & (events["rank"] == key[2])]
        rows = rows[np.argsort(rows["index"])]
        batch, rank, layer = int(rows["requests"][0]), key[2], key[1]
        ops = (tail_plan(model, layout, rank, batch, impl) if layer >= run.layers else
               layer_plan(model, layout, rank, layer, np.ones(batch, dtype=np.int64), impl, run.hopb, run.a2a_chunk))
        for op, row in zip(ops, rows):  # the plan's ops, with the KV tokens each attention read
            if op.name.value == "attention":
                op = dataclasses.replace(op, kernels=(dataclasses.replace(op.kernels[0], tokens=float(row["tokens"])),))
            expected = (timer.collective_seconds(op.collective, op.nbytes, op.group_size) if op.is_collective
                        else timer.op_seconds(op))
            assert row["end_s"] - row["start_s"] == pytest.approx(expected, rel=1e-9)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["topology"])["name"].startswith(topo.name)
    assert data["topology"].startswith(topo.name) and data["ttl_s"] != data["source_ttl_s"]


# --- validate ---------------------------------------------------------------------------------------
def test_validate_accepts_a_real_trace(traces):
    result = invoke("validate", traces["a"])
    assert result.stdout.startswith("OK") and "4 ranks" in result.stdout
    assert json.loads(invoke("validate", traces["a"], "--json").stdout)["ok"] is True


def test_validate_lists_every_problem(traces, tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(traces["a"], "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
                 if k not in ("schema_version", "complete")}
        events, kv = f["events"][...], f["kv_tokens"][...]
    steps = [events[events["step"] == s].copy() for s in range(3)]
    steps[0]["end_s"][0] = steps[0]["start_s"][0] - 1e-6  # ends before it starts
    comm = np.flatnonzero(steps[1]["stream"] == b"comm")
    steps[1]["start_s"][comm[1]] = steps[1]["start_s"][comm[0]]  # overlaps the previous comm op
    steps[2] = np.delete(steps[2], np.flatnonzero(steps[2]["rank"] == 3)[0])  # rank 3 lacks an op
    with TraceWriter(path, attrs, 4) as writer:
        for s, rows in enumerate(steps):
            writer.append_step(rows, kv[s])
        writer.append_step(events[:0], kv[-1])  # a kv_tokens row without events
        writer.finish()
    result = invoke("validate", path, ok=False)
    line = _error_line(result)
    assert "problems (listed above)" in line
    for needle in ("end before start", "overlapping ops", "step 2: ranks have different numbers of events",
                   "rank 3 has", "/kv_tokens has 4 row(s) but the events have 3 step(s)"):
        assert needle in result.stderr
    data = json.loads(invoke("validate", path, "--json", ok=False).stdout)
    assert data["ok"] is False and len(data["problems"]) == 4


# --- bad files and bad options: one line, exit code 2, from every command ------------------------------
def _bad_file(kind: str, good: Path, tmp: Path) -> Path:
    path = tmp / f"{kind}.h5"
    if kind == "not-hdf5":
        path.write_text("time,rank\n0,1\n")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "corrupt-events":  # valid HDF5 structure, garbage inside the first events chunk
        with h5py.File(good, "r") as f:
            chunk = f["events"].id.get_chunk_info(0)
        data = bytearray(good.read_bytes())
        for i in range(chunk.byte_offset + 64, chunk.byte_offset + chunk.size - 8, 7):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    else:
        shutil.copy(good, path)
        with h5py.File(path, "a") as f:
            if kind == "no-complete":
                del f.attrs["complete"]
            else:
                f.attrs["schema_version"] = 99
    return path


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind, message", [
    ("not-hdf5", "not an HDF5 file"),
    ("truncated", "truncated or corrupt HDF5 file"),
    ("corrupt-events", "events are unreadable"),
    ("no-complete", "incomplete"),
    ("unknown-schema", "schema version 99 is not supported"),
])
def test_bad_file_gets_one_line_and_exit_2(traces, tmp_path, command, kind, message):
    bad = _bad_file(kind, traces["a"], tmp_path)
    args = [{"BAD": str(bad), "GOOD": str(traces["a"])}.get(a, a).replace("OUT", str(tmp_path / "out"))
            for a in COMMANDS[command]]
    line = _error_line(invoke(*args, ok=False))
    assert message in line and bad.name in line
    assert not list(tmp_path.glob("out*")), "no output may be left behind"


@pytest.mark.parametrize("args, message", [
    (["replay", "A", "-o", "A"], "is the source trace"),
    (["replay", "A", "-o", "OUT.h5", "--nvlink-scale", "0"], "scales must be > 0"),
    (["replay", "A", "-o", "OUT.h5", "--topology", "no-such"], "unknown topology 'no-such'"),
    (["export", "A", "-o", "OUT.json", "--layers", "5"], "--layers 5 is outside the trace"),
    (["summarize", "MISSING"], "no such file"),
])
def test_bad_options_get_one_line_and_exit_2(traces, tmp_path, args, message):
    args = [{"A": str(traces["a"]), "MISSING": str(tmp_path / "missing.h5")}.get(a, a)
            .replace("OUT", str(tmp_path / "out")) for a in args]
    assert message in _error_line(invoke(*args, ok=False))
    assert not list(tmp_path.glob("out*"))


def test_op_grouping_stays_exact_on_hash_collisions(traces, monkeypatch):
    """With a degenerate hash (first 8 bytes only), 'all_reduce_attn' and 'all_reduce_ffn'
    collide; the exact fallback must still count every op separately."""
    import helix_mpi.analysis.codes as codes

    expected = {(r["op"], r["count"]) for r in summarize_trace(traces["a"])["ops"]}
    monkeypatch.setattr(codes, "_HASH_BASE", 0)
    assert {(r["op"], r["count"]) for r in summarize_trace(traces["a"])["ops"]} == expected
