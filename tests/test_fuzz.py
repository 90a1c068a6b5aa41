"""Generated bad input (hypothesis), in-process through the real command (conftest.call_cli):
traces truncated, bit-flipped, with datasets dropped or retyped and attributes rewritten; request
traces (Mooncake JSONL, Azure CSV) with junk, missing fields, negative or huge numbers; topology
files with random edits. Every case ends with a result (input still valid) or exit 2 and one line
`helix-mpi: error: ...`: never a traceback, never a hang. Over 500 cases per run; a few more
through the installed console script."""
from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import call_cli, run_cli

TOPOLOGY = (Path(__file__).resolve().parent.parent / "topologies" / "gb200-nvl72.toml").read_text()
HANG_GUARD_S = 60
# derandomize: the same generated cases on every run (CI is not at the mercy of a new rare case; to
# explore new ones, run with HYPOTHESIS_SEED_RANDOM=1)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                database=None, derandomize=not os.environ.get("HYPOTHESIS_SEED_RANDOM"))


@contextlib.contextmanager
def _hang_guard(seconds: int = HANG_GUARD_S):
    """A hang becomes a failure: an exception in Python code, or (stuck in C) a dump and exit."""
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_clean(done, listing: bool = False) -> None:
    """A result, exit 2 with one `helix-mpi: error:` line (validate may list problems above it), or
    exit 3 with one `helix-mpi: DOES NOT FIT:` line."""
    event(f"exit {done.returncode}")  # hypothesis statistics: how many cases still had a result
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode == 0:
        assert all(line.startswith("helix-mpi: warning:") for line in lines), done.stderr
        return
    if done.returncode == 3:  # a configuration that does not fit (issue 14): one line saying so
        assert len(lines) == 1 and lines[0].startswith("helix-mpi: DOES NOT FIT: "), done.stderr
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert lines and lines[-1].startswith("helix-mpi: error: "), done.stderr
    assert lines[:-1] == [] or (listing and all(line.startswith("  - ") for line in lines[:-1])), done.stderr


def _cli(args: list[str]):
    """The command in-process; a warning would print lines beyond the one allowed, so it fails."""
    with _hang_guard(), warnings.catch_warnings():
        warnings.simplefilter("error")
        return call_cli(args)


# --- traces -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """A real 2-rank trace (3 steps) to corrupt."""
    path = tmp_path_factory.mktemp("fuzz") / "good.h5"
    done = run_cli(["run", "-n", "2", "--steps", "3", "-o", str(path)])
    assert done.returncode == 0, done.stderr
    return path


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5)
ARRAYS = [np.arange(5), np.zeros((3, 2)), np.array([b"x"]), np.zeros(0), np.ones((2, 3, 4)),
          np.full((3, 2), 2**40), np.full((3, 2), -1), np.zeros((3, 3), dtype=np.int64)]
EVENT_VALUES = {"i": [-1, -2**31, 2**31 - 1, 0, 1, 7, 10**6], "f": [math.nan, math.inf, -math.inf, -1.0, 1e300, 0.0],
                "S": [b"", b"x", b"comm", b"compute", b"all_to_all", b"\xff\xfe"]}


def _json_paths(value, prefix=()) -> list[tuple]:
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found += _json_paths(inner, prefix + (key,))
    return found


def _edit_json(text: str, choices: list[int], values: list) -> str:
    """Replace (or drop) values at paths picked by `choices` in the JSON `text`."""
    document = json.loads(text)
    for choice, value in zip(choices, values):
        paths = _json_paths(document)
        if not paths:
            break
        path = paths[choice % len(paths)]
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if value == "<drop>" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return json.dumps(document)


def _corrupt(source: Path, target: Path, mutation: tuple) -> None:
    kind, *args = mutation
    data = source.read_bytes()
    if kind == "truncate":
        target.write_bytes(data[:args[0] % len(data)])
        return
    if kind == "flip":
        flipped = bytearray(data)
        for offset, bit in args[0]:
            flipped[offset % len(flipped)] ^= 1 << bit
        target.write_bytes(bytes(flipped))
        return
    shutil.copy(source, target)
    with h5py.File(target, "a") as f:
        if kind == "drop":
            names = ["events", "kv_tokens", "summary", *f.attrs]
            name = names[args[0] % len(names)]
            del (f if name in f else f.attrs)[name]
        elif kind == "retype":
            del f[args[0]]
            f.create_dataset(args[0], data=ARRAYS[args[1] % len(ARRAYS)])
        elif kind == "attribute":
            f.attrs[args[0]] = args[1]
        elif kind == "nested":
            f.attrs[args[0]] = _edit_json(f.attrs[args[0]], args[1], args[2])
        elif kind == "events":
            events = f["events"][...]
            for row, field, pick in args[0]:
                name = events.dtype.names[field % len(events.dtype.names)]
                choices = EVENT_VALUES[events.dtype[name].kind if events.dtype[name].kind in "fS" else "i"]
                events[name][row % len(events)] = choices[pick % len(choices)]
            del f["events"]
            f.create_dataset("events", data=events, maxshape=(None,), chunks=True)


ATTRIBUTES = ["config", "topology", "memory", "world_size", "complete", "schema_version", "versions"]
TRACE_MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1,
                                        max_size=30)),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("retype"), st.sampled_from(["events", "kv_tokens"]), st.integers(0, 20)),
    st.tuples(st.just("attribute"), st.sampled_from(ATTRIBUTES),
              st.one_of(JSON_VALUES.map(json.dumps), st.sampled_from(["{", "", "nan"]), st.integers(-5, 2**62),
                        st.booleans(), st.floats(allow_nan=False))),
    st.tuples(st.just("nested"), st.sampled_from(["config", "topology", "memory"]),
              st.lists(st.integers(0, 10**4), min_size=1, max_size=3),
              st.lists(st.one_of(JSON_VALUES, st.just("<drop>")), min_size=3, max_size=3)),
    st.tuples(st.just("events"), st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 30), st.integers(0, 10)),
                                          min_size=1, max_size=4)),
)
TRACE_COMMANDS = [
    lambda t, out: ["summarize", t, "--json"],
    lambda t, out: ["summarize", t, "--by", "rank"],
    lambda t, out: ["validate", t],
    lambda t, out: ["export", t, "-o", str(out / "chrome.json")],
    lambda t, out: ["replay", t, "--no-hopb", "-o", str(out / "replayed.h5")],
]


@settings(FUZZ, max_examples=260)
@given(mutation=TRACE_MUTATIONS, command=st.integers(0, len(TRACE_COMMANDS) - 1))
def test_corrupted_traces_get_a_result_or_one_line(trace, tmp_path, mutation, command):
    broken = tmp_path / "broken.h5"
    _corrupt(trace, broken, mutation)
    args = TRACE_COMMANDS[command](str(broken), tmp_path)
    _check_clean(_cli(args), listing=args[0] == "validate")


def test_an_untouched_trace_passes_every_command(trace, tmp_path):
    for make in TRACE_COMMANDS:
        done = _cli(make(str(trace), tmp_path))
        assert done.returncode == 0, done.stderr
    assert _cli(["compare", str(trace), str(tmp_path / "replayed.h5")]).returncode == 0


# --- request traces -----------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(-10**3, 10**4), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=4),
                    st.none(), st.booleans(), st.just([]), st.just({}))
VALID_ROW = st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 40))  # gap ms, input, output


@st.composite
def mooncake_lines(draw) -> tuple[list[str], bool]:
    """(lines, still valid): valid rows, rows with junk values or missing fields, and junk lines."""
    lines, valid, clock = [], True, 0
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["valid", "valid", "junk-values", "junk-line"]))
        if kind == "valid":
            gap, tokens_in, tokens_out = draw(VALID_ROW)
            clock += gap
            lines.append(json.dumps({"timestamp": clock, "input_length": tokens_in, "output_length": tokens_out}))
            continue
        valid = False
        if kind == "junk-values":
            row = {"timestamp": draw(NUMBERS), "input_length": draw(NUMBERS), "output_length": draw(NUMBERS)}
            for key in draw(st.lists(st.sampled_from(sorted(row)), max_size=2)):
                row.pop(key, None)
            lines.append(json.dumps(row))
        else:
            lines.append(draw(st.sampled_from(["{", "junk", "[1, 2]", "null", "\x00\x01", "{\"timestamp\": 1}",
                                               '{"timestamp": 1e999}', "[" * 5000])))
    return lines, valid


@st.composite
def azure_lines(draw) -> tuple[list[str], bool]:
    header = draw(st.sampled_from(["TIMESTAMP,ContextTokens,GeneratedTokens", "TIMESTAMP,ContextTokens", "a,b,c",
                                   "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens"]))
    lines, valid = [header], header.endswith("GeneratedTokens")
    for second in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            _, tokens_in, tokens_out = draw(VALID_ROW)
            lines.append(f"2023-11-16 18:15:{10 + second:02d}.{draw(st.integers(0, 9999999)):07d},{tokens_in},"
                         f"{tokens_out}")
            continue
        valid = False
        stamp = draw(st.sampled_from(["2023-11-16 18:15:46.6805900", "2023-02-30 00:00:00", "x", "",
                                      "9999-12-31 23:59:60.999999999+23:59", "0001-01-01 00:00:00"]))
        lines.append(",".join([stamp, str(draw(NUMBERS)), str(draw(NUMBERS))]))
    return lines, valid


SERVING_OPTIONS = st.sampled_from([[], ["--first", "3"], ["--context-scale", "1000"], ["--output-scale", "10"],
                                   ["--time-scale", "1e-300"], ["--max-batch", "2"], ["--start", "1", "--end", "2"],
                                   ["--kv-capacity", "100"], ["--context-scale", "1e300"]])


@settings(FUZZ, max_examples=200)
@given(mooncake=st.booleans(), data=st.data(), ending=st.sampled_from([b"", b"\n", b"\r\n", b"\xff\xfe"]),
       options=SERVING_OPTIONS)
def test_broken_request_traces_get_a_result_or_one_line(tmp_path, mooncake, data, ending, options):
    lines, valid = data.draw(mooncake_lines() if mooncake else azure_lines())
    path = tmp_path / ("trace.jsonl" if mooncake else "trace.csv")
    path.write_bytes("\n".join(lines).encode() + ending)
    done = _cli(["model", "--model", "tiny", "--gpus", "2", "--workload", str(path), "--json", *options])
    _check_clean(done)
    if valid and ending != b"\xff\xfe" and not options:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["requests"] == len(lines) - (0 if mooncake else 1)


# --- topology files -------------------------------------------------------------------------------------
TOML_VALUES = ["0", "-1", "1e999", "-1e999", "nan", "inf", "1e-320", "9223372036854775807", "9223372036854775808",
               '"x"', "true", "[1, 2]", "{a = 1}", "0.5", "72", "1_000", "0x10", "1979-05-27", "", "= 3", "[" * 3000]
TOML_EDITS = st.lists(st.tuples(st.sampled_from(["value", "delete", "duplicate", "insert", "rename", "truncate"]),
                                st.integers(0, 10**4), st.sampled_from(TOML_VALUES + ["[gpu]", "[[x]]", "junk",
                                                                                      "a.b.c = 1", "\x00"])),
                      min_size=1, max_size=4)


def _edit_toml(edits: list[tuple[str, int, str]]) -> str:
    lines = TOPOLOGY.splitlines()
    for kind, at, text in edits:
        if not lines:
            break
        i = at % len(lines)
        if kind == "value" and "=" in lines[i]:
            lines[i] = f"{lines[i].split('=')[0]}= {text}"
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "insert":
            lines.insert(i, text)
        elif kind == "rename" and "=" in lines[i]:
            lines[i] = "z" + lines[i]
        elif kind == "truncate":
            lines = lines[:i]
    return "\n".join(lines)


@settings(FUZZ, max_examples=100)
@given(edits=TOML_EDITS, command=st.sampled_from([
    ["model", "--model", "tiny", "--gpus", "2", "--json"], ["collectives", "--ranks", "16"],
    ["model", "--model", "deepseek-r1", "--gpus", "72", "--context", "100000", "--json"]]))
def test_edited_topology_files_get_a_result_or_one_line(tmp_path, edits, command):
    path = tmp_path / "edited.toml"
    path.write_text(_edit_toml(edits))
    done = _cli([*command, "--topology", str(path)])
    _check_clean(done)
    if done.returncode == 0 and command[0] == "model":
        figures = json.loads(done.stdout)
        assert math.isfinite(figures["ttl_s"]) and figures["ttl_s"] > 0


@settings(FUZZ, max_examples=20)
@given(scale=st.floats(1e-3, 1e3), key=st.sampled_from(["hbm_gb_per_s = 8000", "link_gb_per_s = 900",
                                                          "ring_base_us = 6.6"]))
def test_valid_topology_edits_change_the_result_as_they_should(tmp_path, scale, key):
    name, value = key.split(" = ")
    path = tmp_path / "scaled.toml"
    path.write_text(TOPOLOGY.replace(key, f"{name} = {float(value) * scale!r}"))
    base = json.loads(_cli(["model", "--model", "tiny", "--gpus", "2", "--json"]).stdout)["ttl_s"]
    done = _cli(["model", "--model", "tiny", "--gpus", "2", "--json", "--topology", str(path)])
    assert done.returncode == 0, done.stderr
    ttl = json.loads(done.stdout)["ttl_s"]
    assert math.isfinite(ttl) and ttl > 0
    faster = (scale > 1) != (name == "ring_base_us")  # more bandwidth or less latency: never slower
    assert (ttl <= base * (1 + 1e-12)) if faster else (ttl >= base * (1 - 1e-12))


# --- the installed command --------------------------------------------------------------------------------
def test_a_few_broken_inputs_through_the_console_script(trace, tmp_path):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(trace.read_bytes()[:5000])
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b'{"timestamp": 0, "input_length": 5, "output_length": 1e308}\n\xff')
    topology = tmp_path / "t.toml"
    topology.write_text(TOPOLOGY.replace("hbm_gb = 186", "hbm_gb = 1e999"))
    for args in (["summarize", str(truncated)], ["validate", str(truncated)],
                 ["model", "--workload", str(junk)], ["model", "--topology", str(topology)]):
        done = run_cli(args, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("helix-mpi: error: "), done.stderr


@pytest.mark.parametrize("damage, message", [
    (lambda path: os.kill(os.getpid(), signal.SIGSEGV), "reading it crashes the HDF5 library (SIGSEGV)"),
    (lambda path: time.sleep(60), "reading it does not finish")])
def test_a_file_that_crashes_or_hangs_the_hdf5_library_gets_one_line(trace, tmp_path, monkeypatch, damage, message):
    """Some flipped bits (a string attribute turned into a sequence, a bad heap address) crash or
    hang HDF5 itself; the readers first read the headers in a forked child (trace.probe_hdf5)."""
    import helix_mpi.trace as trace_module

    monkeypatch.setattr(trace_module, "_read_headers", damage)
    monkeypatch.setattr(trace_module, "PROBE_TIMEOUT_S", 1.0)
    copy = tmp_path / "damaged.h5"
    shutil.copy(trace, copy)
    done = _cli(["summarize", str(copy)])
    assert done.returncode == 2
    assert done.stderr.startswith(f"helix-mpi: error: {copy}: damaged HDF5 file: {message}")
    assert done.stderr.count("\n") == 1
