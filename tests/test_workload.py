"""Trace readers (Mooncake JSON lines, Azure CSV) and the analytic serving simulation."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from helix_mpi.analytic import layer_time
from helix_mpi.config import MODEL_PRESETS, Layout, Strategy, make_layout
from helix_mpi.kvcache import tokens_held
from helix_mpi.serving import (LayerTimer, ServingError, kv_bytes_per_token_per_gpu, memory_model, serve,
                               tokens_held_batch, weight_bytes_per_gpu)
from helix_mpi.topology import load_topology
from helix_mpi.workload import Request, Workload, WorkloadError, load_workload

ROOT = Path(__file__).resolve().parent.parent
MOONCAKE_SAMPLE = ROOT / "traces" / "mooncake_conversation_sample.jsonl"
AZURE_SAMPLE = ROOT / "traces" / "azure_conv_sample.csv"
MOONCAKE_FULL = ROOT.parent / "shared" / "data" / "mooncake" / "conversation_trace.jsonl"
TOPO = load_topology("gb200-nvl72")
TINY = MODEL_PRESETS["tiny"]
LLAMA = MODEL_PRESETS["llama-3.1-405b"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mooncake_line(ms: object = 0, tokens_in: object = 10, tokens_out: object = 2) -> str:
    return f'{{"timestamp": {ms}, "input_length": {tokens_in}, "output_length": {tokens_out}}}\n'


AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


# --- readers on the shipped samples ---------------------------------------------------------------
def test_mooncake_sample():
    w = load_workload(MOONCAKE_SAMPLE)
    assert len(w) == 200
    assert w.requests[0] == Request(0, 0.0, 6758, 500)
    assert w.requests[-1].arrival_s == 72.0 and w.requests[-1].index == 199
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(w.requests, w.requests[1:]))


def test_azure_sample():
    w = load_workload(AZURE_SAMPLE)
    assert len(w) == 100
    assert w.requests[0] == Request(0, 0.0, 374, 44)
    # 18:15:50.9951690 - 18:15:46.6805900, exact to the 100 ns tick
    assert w.requests[1] == Request(1, 4.314579, 396, 109)
    assert w.requests[-1].arrival_s == pytest.approx(42.685223, abs=1e-9)


@pytest.mark.skipif(not MOONCAKE_FULL.is_file(), reason="shared Mooncake trace not present")
def test_full_mooncake_trace():
    w = load_workload(MOONCAKE_FULL)
    assert len(w) == 12031 and w.requests[-1].arrival_s == 3536.999
    assert load_workload(MOONCAKE_FULL, first=200).requests == load_workload(MOONCAKE_SAMPLE).requests


def test_azure_timestamps_offsets_and_extra_columns(tmp_path):
    path = write(tmp_path, "t.csv", "GeneratedTokens,TIMESTAMP,ContextTokens,Extra\n"
                 "5,2024-05-10 00:00:00.009930+00:00,7,x\n5,2024-05-10 01:00:01.5+01:00,8,y\n"
                 "6,2024-05-10 00:00:02Z,9,z\n")
    w = load_workload(path)
    assert [r.arrival_s for r in w.requests] == [0.0, pytest.approx(1.49007), pytest.approx(1.99007)]
    assert [(r.input_tokens, r.output_tokens) for r in w.requests] == [(7, 5), (8, 5), (9, 6)]


def test_explicit_format_overrides_extension(tmp_path):
    path = write(tmp_path, "trace.txt", mooncake_line(0) + mooncake_line(1500))
    with pytest.raises(WorkloadError, match="extension"):
        load_workload(path)
    assert load_workload(path, "mooncake").requests[1].arrival_s == 1.5
    with pytest.raises(WorkloadError, match="unknown trace format"):
        load_workload(path, "sharegpt")


# --- bad rows: one line naming the file and the line ----------------------------------------------------
BAD_MOONCAKE = [
    ("bad json", mooncake_line(0) + '{"timestamp": 1, "input_length": 3,\n', 2, "not valid JSON"),
    ("two values", mooncake_line(0) + mooncake_line(1).strip() + "," + mooncake_line(2), 2, "not valid JSON"),
    ("not an object", mooncake_line(0) + "[1, 2, 3]\n", 2, "JSON object"),
    ("missing field", mooncake_line(0) + '{"timestamp": 5, "input_length": 3}\n', 2, "output_length"),
    ("float length", mooncake_line(0) + mooncake_line(1, 3.5), 2, "integer"),
    ("string length", mooncake_line(0) + mooncake_line(1, '"12"'), 2, "integer"),
    ("bool length", mooncake_line(0) + mooncake_line(1, "true"), 2, "integer"),
    ("negative", mooncake_line(0) + mooncake_line(1) + mooncake_line(2, -4), 3, "negative"),
    ("zero output", mooncake_line(0) + mooncake_line(1, 10, 0), 2, "at least one token"),
    ("bad timestamp", mooncake_line(0) + mooncake_line('"soon"'), 2, "timestamp"),
    ("unsorted", mooncake_line(0) + mooncake_line(900) + mooncake_line(800), 3, "sorted"),
]


@pytest.mark.parametrize("text, line, what", [case[1:] for case in BAD_MOONCAKE], ids=[c[0] for c in BAD_MOONCAKE])
def test_bad_mooncake_rows(tmp_path, text, line, what):
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    message = str(info.value)
    assert f"{path}: line {line}:" in message and what in message and "\n" not in message


STAMP = "2023-11-16 18:15:46.6805900"
BAD_AZURE = [
    ("bad header", "TIME,Context,Generated\n" + f"{STAMP},1,1\n", 1, "header"),
    ("few fields", AZURE_HEADER + f"{STAMP},1,1\n{STAMP},4\n", 3, "fields"),
    ("bad timestamp", AZURE_HEADER + f"{STAMP},1,1\n16/11/2023 18:15,1,1\n", 3, "TIMESTAMP"),
    ("bad date", AZURE_HEADER + f"{STAMP},1,1\n2023-02-30 18:15:46.1,1,1\n", 3, "TIMESTAMP"),
    ("non-integer", AZURE_HEADER + f"{STAMP},1.5,1\n", 2, "integer"),
    ("negative", AZURE_HEADER + f"{STAMP},1,1\n{STAMP},-1,1\n", 3, "negative"),
    ("zero output", AZURE_HEADER + f"{STAMP},5,0\n", 2, "at least one token"),
    ("unsorted", AZURE_HEADER + f"{STAMP},1,1\n2023-11-16 18:15:45.0,1,1\n", 3, "sorted"),
]


@pytest.mark.parametrize("text, line, what", [case[1:] for case in BAD_AZURE], ids=[c[0] for c in BAD_AZURE])
def test_bad_azure_rows(tmp_path, text, line, what):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    message = str(info.value)
    assert f"{path}: line {line}:" in message and what in message and "\n" not in message


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("e.csv", ""), ("h.csv", AZURE_HEADER)])
def test_empty_files(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(WorkloadError, match=f"{path}: empty file"):
        load_workload(path)


def test_missing_file(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        load_workload(tmp_path / "nope.jsonl")


# --- options: window -> first N -> context scale ------------------------------------------------------------
@pytest.fixture
def ten(tmp_path) -> Path:  # arrivals 0, 1, ..., 9 s; input 10*i + 5, output i + 1
    return write(tmp_path, "ten.jsonl", "".join(mooncake_line(1000 * i, 10 * i + 5, i + 1) for i in range(10)))


def test_window(ten):
    w = load_workload(ten, start_s=2.0, end_s=5.0)
    assert [r.index for r in w.requests] == [2, 3, 4] and w.requests[0].arrival_s == 2.0
    assert [r.index for r in load_workload(ten, start_s=7.5).requests] == [8, 9]
    assert [r.index for r in load_workload(ten, end_s=1.0).requests] == [0]


def test_first_applies_after_the_window(ten):
    assert [r.index for r in load_workload(ten, start_s=3.0, first=2).requests] == [3, 4]
    assert len(load_workload(ten, first=50)) == 10


def test_context_scale_applies_last(ten):
    w = load_workload(ten, start_s=1.0, first=3, context_scale=8)
    assert [(r.index, r.input_tokens, r.output_tokens) for r in w.requests] == [(1, 120, 2), (2, 200, 3), (3, 280, 4)]
    assert [r.input_tokens for r in load_workload(ten, first=2, context_scale=0.25).requests] == [1, 4]  # round()
    assert "context x8" in w.source and "first 3" in w.source


@pytest.mark.parametrize("kwargs, what", [
    (dict(start_s=5.0, end_s=5.0), "empty time window"),
    (dict(start_s=float("nan")), "finite"),
    (dict(first=0), "first"),
    (dict(first=2.5), "first"),
    (dict(context_scale=0), "context_scale"),
    (dict(start_s=20.0), "no requests left"),
])
def test_bad_options(ten, kwargs, what):
    with pytest.raises(WorkloadError, match=what):
        load_workload(ten, **kwargs)


# --- the fast layer time equals analytic.layer_time --------------------------------------------------------------
def test_tokens_held_batch_matches_kvcache():
    lengths = np.arange(0, 300)
    for kvp in (1, 3, 8):
        for tpb in (1, 4, 16):
            held = tokens_held_batch(lengths, kvp, tpb)
            assert all((held[:, i] == tokens_held(int(n), kvp, tpb)).all() for i, n in enumerate(lengths))


LAYOUTS = [
    ("llama-3.1-405b", Layout(8, 8, 64)),
    ("llama-3.1-405b", Layout(1, 8, 8, strategy=Strategy.TP)),
    ("tiny", Layout(1, 1, 1)),
    ("tiny", Layout(4, 1, 4)),
    ("tiny-gqa3", Layout(2, 4, 8)),  # uneven head and FFN shards
    ("tiny-gqa3", Layout(3, 2, 6)),
    ("small", Layout(16, 1, 16)),
    ("tiny", make_layout(TINY, 8, 2, 4, "kvp")),
    ("tiny", make_layout(TINY, 8, None, None, "tp")),  # TP beyond K: duplicated KV heads
]


@pytest.mark.parametrize("name, layout", LAYOUTS, ids=[f"{n}-{l.strategy.value}-{l.kvp}x{l.tpa}" for n, l in LAYOUTS])
@pytest.mark.parametrize("hopb", [True, False])
def test_layer_timer_equals_layer_time(name, layout, hopb):
    model, rng = MODEL_PRESETS[name], np.random.default_rng(7)
    for precision in ("fp4", "bf16"):
        timer = LayerTimer(model, layout, precision, hopb, TOPO)
        for batch in (1, 2, 5, 17):
            for scale in (1, 100, 2_000_000):  # empty shards, latency-bound, bandwidth-bound
                kv = rng.integers(0, scale, (layout.world_size, batch))
                expected = layer_time(model, layout, kv, precision, hopb, TOPO)
                assert timer(kv) == pytest.approx(expected, rel=1e-12, abs=0)


# --- memory ----------------------------------------------------------------------------------------------------
def test_memory_model():
    sharded = 16384 * 128 * 128 * 2 + 2 * 16384 * 8 * 128 + 3 * 16384 * 53248  # W_Q, W_O, W_K, W_V, FFN
    tp = Layout(1, 8, 8, strategy=Strategy.TP)  # layer weights / N (+ the replicated RMSNorm vectors)
    assert weight_bytes_per_gpu(LLAMA, tp, "fp4") == (sharded / 8 + 2 * 16384) * 0.5 * 126
    helix = Layout(8, 8, 64)  # W_Q/W_K/W_V replicated over the 8 KVP ranks of a TPA group
    qkv_per_rank = 16384 * (16 + 2) * 128
    assert weight_bytes_per_gpu(LLAMA, helix, "fp4") == (qkv_per_rank + 2 * 128 * 16384 + 53248 * 3 * 16384 // 64
                                                         + 2 * 16384) * 0.5 * 126
    assert kv_bytes_per_token_per_gpu(LLAMA, helix, "fp8") == 2 * 1 * 128 * 1.0 * 126
    with pytest.raises(ServingError, match="dense GQA"):
        memory_model(MODEL_PRESETS["deepseek-r1"], Layout(64, 1, 64), "fp4", TOPO)


# --- serving on hand-checkable workloads ----------------------------------------------------------------------
ONE_RANK = Layout(1, 1, 1)


def workload(*requests: tuple[float, int, int]) -> Workload:
    return Workload(tuple(Request(i, *r) for i, r in enumerate(requests)), "test")


def step_s(*lengths: int, model=TINY, layout=ONE_RANK) -> float:
    """Seconds of one decode step of a 1-rank batch whose KVs hold `lengths` tokens."""
    return model.num_layers * layer_time(model, layout, np.array([lengths]), "fp4", True, TOPO)


def tiny_topology(kv_tokens: int):
    """gb200-nvl72 with HBM for the tiny model's weights plus `kv_tokens` KV tokens on one rank."""
    memory = memory_model(TINY, ONE_RANK, "fp4", TOPO)
    hbm = memory.weight_bytes + (kv_tokens + 0.5) * memory.kv_bytes_per_token
    return dataclasses.replace(TOPO, gpu=dataclasses.replace(TOPO.gpu, hbm_bytes=hbm))


def test_two_requests_batched():
    # A: 10 prompt tokens, 3 to decode; B: 20 and 2. Both arrive at 0 and decode together.
    result = serve(workload((0.0, 10, 3), (0.0, 20, 2)), TINY, ONE_RANK, TOPO, kv_transfer="none")
    steps = [step_s(11, 21), step_s(12, 22), step_s(13)]
    assert result["steps"] == 3 and result["max_batch"] == 2 and result["generated_tokens"] == 5
    assert result["makespan_s"] == pytest.approx(sum(steps), rel=1e-12)
    assert result["ttl_s"] == pytest.approx([sum(steps) / 3, sum(steps[:2]) / 2], rel=1e-12)
    assert result["queue_s"].tolist() == [0.0, 0.0]
    assert result["tokens_per_s_per_gpu"] == pytest.approx(5 / sum(steps), rel=1e-12)
    assert result["batch_size"].tolist() == [2, 2, 1]
    assert result["kv_tokens_per_rank"][:, 0].tolist() == [32, 34, 13]
    assert result["kv_tokens_at_end"] == 0


def test_queueing_when_hbm_is_full():
    # HBM holds 30 KV tokens besides the weights: A's final KV (10 + 3) or B's (20 + 2) fits, not both.
    small = tiny_topology(30)
    result = serve(workload((0.0, 10, 3), (0.0, 20, 2)), TINY, ONE_RANK, small, kv_transfer="none")
    assert result["steps"] == 5 and result["max_batch"] == 1
    first = [step_s(11), step_s(12), step_s(13)]
    assert result["queue_s"] == pytest.approx([0.0, sum(first)], rel=1e-12)
    assert result["batch_size"].tolist() == [1] * 5
    assert result["kv_tokens_per_rank"][3:, 0].tolist() == [21, 22]  # A's KV was freed
    same = serve(workload((0.0, 10, 3), (0.0, 20, 2)), TINY, ONE_RANK, TOPO, kv_transfer="none", max_batch=1)
    assert same["queue_s"] == pytest.approx(result["queue_s"], rel=1e-12)


def test_request_too_large_for_hbm():
    with pytest.raises(ServingError, match="request 1 needs 22 KV tokens"):
        serve(workload((0.0, 10, 3), (0.0, 20, 2)), TINY, ONE_RANK, tiny_topology(21))
    no_room = dataclasses.replace(TOPO, gpu=dataclasses.replace(TOPO.gpu, hbm_bytes=1000.0))
    with pytest.raises(ServingError, match="weights need"):
        serve(workload((0.0, 10, 3)), TINY, ONE_RANK, no_room)


def test_arrival_during_a_step_joins_the_next_step():
    first = step_s(11)
    result = serve(workload((0.0, 10, 3), (first / 2, 20, 1)), TINY, ONE_RANK, TOPO, kv_transfer="none")
    assert result["batch_size"].tolist() == [1, 2, 1]
    assert result["queue_s"] == pytest.approx([0.0, first / 2], rel=1e-12)


def test_kv_is_freed_and_idle_gaps_are_skipped():
    # B arrives long after A left: its steps see only its own KV.
    result = serve(workload((0.0, 10, 2), (100.0, 5, 2)), TINY, ONE_RANK, TOPO, kv_transfer="none")
    assert result["kv_tokens_per_rank"][:, 0].tolist() == [11, 12, 6, 7]
    assert result["time_s"][2] == 100.0 and result["queue_s"].tolist() == [0.0, 0.0]
    assert result["kv_tokens_at_end"] == 0


def test_kv_transfer_is_charged_to_the_queue():
    layout = Layout(4, 1, 4)
    w = workload((0.0, 1000, 2))
    result = serve(w, TINY, layout, TOPO, kv_transfer="scale_out", tokens_per_block=16)
    shard_bytes = 256 * kv_bytes_per_token_per_gpu(TINY, layout, "fp4")  # 1000 tokens over 4 ranks: max 256
    transfer = TOPO.scale_out.latency_s + shard_bytes / TOPO.scale_out.bytes_per_s
    assert result["queue_s"][0] == pytest.approx(transfer, rel=1e-12)
    free = serve(w, TINY, layout, TOPO, kv_transfer="none")
    assert free["ttl_s"] == pytest.approx(result["ttl_s"], rel=1e-12) and free["queue_s"][0] == 0.0


def test_fast_timer_gives_the_exact_simulation():
    rng = np.random.default_rng(3)
    arrivals = np.sort(rng.uniform(0, 0.002, 12)).tolist()
    w = workload(*[(t, int(rng.integers(0, 300)), int(rng.integers(1, 20))) for t in arrivals])
    layout = Layout(4, 2, 8)
    fast = serve(w, TINY, layout, TOPO, tokens_per_block=4)
    exact = serve(w, TINY, layout, TOPO, tokens_per_block=4, exact=True)
    for key in ("steps", "max_batch", "generated_tokens"):
        assert fast[key] == exact[key]
    for key in ("ttl_p50", "ttl_p99", "queue_mean_s", "makespan_s", "tokens_per_s_per_gpu"):
        assert fast[key] == pytest.approx(exact[key], rel=1e-12)


def test_kv_imbalance_is_small_on_long_contexts():
    w = load_workload(MOONCAKE_SAMPLE, context_scale=8)
    result = serve(w, LLAMA, Layout(8, 8, 64), TOPO)
    assert result["long_context_steps"] > 0 and 1.0 <= result["kv_imbalance"] < 1.05
    assert result["kv_tokens_per_rank"].shape[1] == 8 and len(result["time_s"]) <= 1000
    assert result["kv_tokens_at_end"] == 0


@pytest.mark.parametrize("kwargs, what", [
    (dict(max_batch=0), "max_batch"),
    (dict(tokens_per_block=0), "tokens_per_block"),
    (dict(kv_transfer="carrier-pigeon"), "kv_transfer"),
    (dict(precision="fp2"), "precision"),
])
def test_bad_serving_options(kwargs, what):
    with pytest.raises(ServingError, match=what):
        serve(workload((0.0, 10, 3)), TINY, ONE_RANK, TOPO, **kwargs)
