"""Trace readers (Mooncake JSON lines, Azure CSV) and the analytic serving simulation (any model,
any strategy), its step timer against analytic.step_time, and `helix-mpi model --workload`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from conftest import run_cli
from helix_mpi.analytic import layer_time, step_time
from helix_mpi.timing import RaggedLayerTime, StepTimer, TimeModel
from helix_mpi.cli import cli
from helix_mpi.config import MODEL_PRESETS, Implementation, Layout, Strategy, make_layout
from helix_mpi.kvcache import tokens_held
from helix_mpi.memory import memory_report
from helix_mpi.serving import (Scheduler, ServingError, ServingSetup, emulated_layer_weights,
                               kv_capacity, serve, simulate, tokens_held_batch)
from helix_mpi.topology import load_topology
from helix_mpi.workload import Request, Workload, WorkloadError, load_workload

ROOT = Path(__file__).resolve().parent.parent
MOONCAKE_SAMPLE = ROOT / "traces" / "mooncake_conversation_sample.jsonl"
AZURE_SAMPLE = ROOT / "traces" / "azure_conv_sample.csv"
MOONCAKE_FULL = ROOT / "traces" / "mooncake_conversation.jsonl.gz"  # scripts/derive_traces.py
TOPO = load_topology("gb200-nvl72")
IMPL = Implementation()  # NVFP4 weights, FP8 KV cache, TensorRT-LLM collectives, CUDA graphs
TINY = MODEL_PRESETS["tiny"]
LLAMA = MODEL_PRESETS["llama-3.1-405b"]
DEEPSEEK = MODEL_PRESETS["deepseek-r1"]


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


def test_output_and_time_scales(ten):
    w = load_workload(ten, first=3, output_scale=0.4, time_scale=0.001)
    assert [(r.arrival_s, r.output_tokens) for r in w.requests] == [(0.0, 1), (0.001, 1), (0.002, 1)]  # at least 1
    assert [r.output_tokens for r in load_workload(ten, output_scale=2.5).requests][:3] == [2, 5, 8]
    assert load_workload(ten, start_s=2.0, time_scale=0.5).requests[0].arrival_s == 1.0  # window in trace seconds
    assert "output x0.4" in w.source and "time x0.001" in w.source


@pytest.mark.parametrize("kwargs, what", [
    (dict(start_s=5.0, end_s=5.0), "empty time window"),
    (dict(start_s=float("nan")), "finite"),
    (dict(first=0), "first"),
    (dict(first=2.5), "first"),
    (dict(context_scale=0), "context_scale"),
    (dict(output_scale=-1.0), "output_scale"),
    (dict(time_scale=float("inf")), "time_scale"),
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
    for impl in (Implementation("fp4", "fp8"), Implementation("bf16", "bf16", "nccl")):
        timer = RaggedLayerTime(model, layout, hopb, TimeModel(TOPO, impl))
        for batch in (1, 2, 5, 17):
            for scale in (1, 100, 2_000_000):  # empty shards, latency-bound, bandwidth-bound
                kv = rng.integers(0, scale, (layout.world_size, batch))
                expected = layer_time(model, layout, kv, impl, hopb, TOPO)
                assert timer(kv) == pytest.approx(expected, rel=1e-12, abs=0)


STEP_LAYOUTS = [  # (model, N, kvp, tpa, strategy): MLA + MoE under every strategy, and dense GQA
    ("tiny-mla-moe", 4, 4, 1, "helix"),
    ("tiny-mla-moe", 4, None, None, "tp"),
    ("tiny-mla-moe", 4, 4, 1, "kvp"),
    ("tiny-mla-moe", 4, None, None, "dp-ep"),
    ("deepseek-r1", 16, None, None, "helix"),
    ("deepseek-r1", 8, None, None, "dp-ep"),
    ("tiny-gqa3", 8, 2, 4, "helix"),
]


@pytest.mark.parametrize("name, n, kvp, tpa, strategy", STEP_LAYOUTS,
                         ids=[f"{c[0]}-{c[4]}-{c[1]}" for c in STEP_LAYOUTS])
@pytest.mark.parametrize("chunk", [1, 0, 2])  # per request (HOP-B), the whole batch, chunks of 2 requests
def test_step_timer_equals_step_time(name, n, kvp, tpa, strategy, chunk):
    model, rng = MODEL_PRESETS[name], np.random.default_rng(11)
    layout = make_layout(model, n, kvp, tpa, strategy)
    for hopb in (True, False):
        timer = StepTimer(model, layout, hopb, TimeModel(TOPO, IMPL), a2a_chunk=chunk)
        for batch in (1, 3, 7):
            for scale in (1, 100, 2_000_000):
                if strategy == "dp-ep":  # every rank its own requests, some none
                    kv = [rng.integers(0, scale, int(rng.integers(0, batch + 1))) for _ in range(n)]
                else:
                    kv = rng.integers(0, scale, (n, batch))
                expected = step_time(model, layout, list(kv), IMPL, hopb, TOPO, a2a_chunk=chunk)
                assert timer(kv) == pytest.approx(expected, rel=1e-12)


# --- memory: memory.py ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n, strategy", [("llama-3.1-405b", 64, "helix"), ("llama-3.1-405b", 8, "tp"),
                                              ("deepseek-r1", 64, "helix"), ("deepseek-r1", 16, "tp"),
                                              ("deepseek-r1", 8, "dp-ep")])
def test_kv_capacity_is_what_memory_report_fits(name, n, strategy):
    model = MODEL_PRESETS[name]
    layout = make_layout(model, n, None, None, strategy)
    cap = kv_capacity(model, layout, "fp4", TOPO)
    tokens = int(cap.tokens.min())
    if strategy == "dp-ep":  # one request of `tokens` tokens on every rank
        fits, over = (memory_report(model, layout, n, t, "fp4", TOPO) for t in (tokens, tokens + 1))
    else:  # one request whose busiest rank holds `tokens` tokens
        fits, over = (memory_report(model, layout, 1, layout.kvp * t, "fp4", TOPO, 1) for t in (tokens, tokens + 1))
    assert fits["fits"] and not over["fits"]
    assert fits["max_weights_bytes"] == cap.weight_bytes.max()
    assert kv_capacity(model, layout, "fp4", TOPO, tokens=123).tokens.tolist() == [123] * n


def test_tp_holds_the_whole_latent_helix_a_shard():
    tp = kv_capacity(DEEPSEEK, make_layout(DEEPSEEK, 64, None, None, "tp"), "fp4", TOPO, kv_precision="fp8")
    helix = kv_capacity(DEEPSEEK, make_layout(DEEPSEEK, 64, None, None, "helix"), "fp4", TOPO, kv_precision="fp8")
    assert tp.kv_bytes_per_token[0] == helix.kv_bytes_per_token[0] == 576 * 1 * 61  # latent 512 + rope 64, FP8
    # both hold ~10M tokens per GPU, but a Helix GPU holds 1/64 of each request: 64x the users
    assert helix.tokens.min() == pytest.approx(tp.tokens.min(), rel=0.02)


def test_emulated_layer_weights():
    assert emulated_layer_weights(TINY, 4).tolist() == [1, 1, 1, 1]
    assert emulated_layer_weights(TINY, 2).tolist() == [2, 2]
    assert emulated_layer_weights(DEEPSEEK, 4).tolist() == [1, 1, 1, 58]  # 3 dense + 58 MoE layers
    assert emulated_layer_weights(DEEPSEEK, 2).tolist() == [1.5 + 29, 1.5 + 29]  # no MoE layer emulated: spread


# --- serving on hand-checkable workloads ----------------------------------------------------------------------
ONE_RANK = Layout(1, 1, 1)


def workload(*requests: tuple[float, int, int]) -> Workload:
    return Workload(tuple(Request(i, *r) for i, r in enumerate(requests)), "test")


def step_s(*lengths: int, model=TINY, layout=ONE_RANK) -> float:
    """Seconds of one decode step (every layer, then the LM head and sampling) of a 1-rank batch
    whose KVs hold `lengths` tokens."""
    return step_time(model, layout, [np.array(lengths)], IMPL, True, TOPO)


def tiny_topology(kv_tokens: int):
    """gb200-nvl72 with HBM for the tiny model's weights plus `kv_tokens` KV tokens on one rank."""
    cap = kv_capacity(TINY, ONE_RANK, "fp4", TOPO, kv_precision="fp8")
    hbm = cap.weight_bytes[0] + (kv_tokens + 0.5) * cap.kv_bytes_per_token[0]
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
    shard_bytes = 256 * kv_capacity(TINY, layout, "fp4", TOPO, kv_precision="fp8").kv_bytes_per_token.max()  # 1000 tokens / 4: max 256
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
    assert result["kv_tokens_per_rank"].shape[1] == 64 and len(result["time_s"]) <= 1000
    assert result["kv_tokens_at_end"] == 0


@pytest.mark.parametrize("kwargs, what", [
    (dict(max_batch=0), "max_batch"),
    (dict(tokens_per_block=0), "tokens_per_block"),
    (dict(kv_transfer="carrier-pigeon"), "kv_transfer"),
    (dict(impl="fp4"), "impl"),
])
def test_bad_serving_options(kwargs, what):
    with pytest.raises(ServingError, match=what):
        serve(workload((0.0, 10, 3)), TINY, ONE_RANK, TOPO, **kwargs)


# --- any model, any strategy --------------------------------------------------------------------------------------
def random_workload(seed: int, count: int, span_s: float, max_prompt: int, max_output: int) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.uniform(0, span_s, count)).tolist()
    return workload(*[(t, int(rng.integers(0, max_prompt)), int(rng.integers(1, max_output))) for t in arrivals])


@pytest.mark.parametrize("name, n, strategy", [("tiny-mla-moe", 4, "helix"), ("tiny-mla-moe", 4, "dp-ep"),
                                              ("tiny-mla-moe", 4, "kvp"), ("tiny", 4, "tp")])
def test_fast_timer_gives_the_exact_simulation_for_every_strategy(name, n, strategy):
    model = MODEL_PRESETS[name]
    layout = make_layout(model, n, None, None, strategy)
    w = random_workload(5, 10, 0.003, 400, 12)
    options = dict(tokens_per_block=4, kv_capacity_tokens=500, max_batch=6)
    fast, exact = serve(w, model, layout, TOPO, **options), serve(w, model, layout, TOPO, exact=True, **options)
    assert fast["steps"] == exact["steps"] and fast["max_batch"] == exact["max_batch"]
    np.testing.assert_allclose(fast["ttl_s"], exact["ttl_s"], rtol=1e-12)
    assert fast["kv_tokens_at_end"] == 0


def step_by_step(w: Workload, setup: ServingSetup) -> Scheduler:
    """The serving loop one step at a time (next_step, the step timer, end_step), as the emulator runs it."""
    scheduler = Scheduler(w, setup)
    timer = StepTimer(setup.model, setup.layout, setup.hopb, TimeModel(setup.topo, setup.impl),
                      a2a_chunk=setup.a2a_chunk)
    now = scheduler.first_arrival
    while not scheduler.done:
        start, batch = scheduler.next_step(now)
        now = start + timer(scheduler.kv_lengths(batch))
        scheduler.end_step(batch, start, now)
    return scheduler


RUN_CASES = [  # (model, N, kvp, tpa, strategy, setup options): chunked and per-request exchanges, HOP-B off,
    # held back by the SLO (at the modeled times of 2026-12: 112 and 60 steps), by max_batch and by memory,
    # transfers of no time, dp-ep
    ("tiny-gqa3", 8, 2, 4, "helix", dict(a2a_chunk=2, ttl_slo=2.5e-4, tokens_per_block=3)),
    ("tiny-gqa3", 8, 4, 2, "helix", dict(a2a_chunk=1, hopb=False, max_batch=4, kv_transfer="none")),
    ("tiny-mla-moe", 4, 4, 1, "helix", dict(kv_capacity_tokens=400, tokens_per_block=4)),
    ("tiny", 8, 2, 4, "kvp", dict(a2a_chunk=3, kv_transfer="nvlink")),
    ("tiny-mla-moe", 4, None, None, "dp-ep", dict(ttl_slo=2.105e-4, kv_capacity_tokens=600)),
    ("tiny", 4, None, None, "tp", dict(max_batch=3)),
]


@pytest.mark.parametrize("name, n, kvp, tpa, strategy, options", RUN_CASES,
                         ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(RUN_CASES)])
def test_runs_of_steps_are_the_step_by_step_loop_bit_for_bit(name, n, kvp, tpa, strategy, options):
    """simulate times the steps between changes of the batch together: every record is that of the
    loop that times one step at a time, exactly."""
    model = MODEL_PRESETS[name]
    setup = ServingSetup(model, make_layout(model, n, kvp, tpa, strategy), TOPO, **options)
    w = random_workload(13, 24, 0.004, 300, 40)
    runs, steps = simulate(w, setup), step_by_step(w, setup)
    for key, value in steps.step_log().items():
        assert np.array_equal(runs.step_log()[key], value), key
    for key in ("admitted", "transfer", "first_start", "first_token", "finish", "owner"):
        assert np.array_equal(getattr(runs, key), getattr(steps, key), equal_nan=True), key
    assert runs.log.slo_held == steps.log.slo_held
    assert len(np.unique(steps.step_log()["batch"])) > 2  # the batch changed along the way


def test_dp_ep_places_each_request_whole_on_the_least_loaded_rank():
    model = MODEL_PRESETS["tiny-mla-moe"]
    layout = make_layout(model, 4, None, None, "dp-ep")
    w = workload((0.0, 30, 5), (0.0, 10, 5), (0.0, 20, 5), (0.0, 5, 5), (0.0, 7, 5))
    setup = ServingSetup(model, layout, TOPO, kv_transfer="none", kv_capacity_tokens=40)
    scheduler = Scheduler(w, setup)
    start, batch = scheduler.next_step(0.0)
    # reserved final lengths 35, 15, 25, 10 on ranks 0..3; the fifth (12) goes to rank 3 (10 + 12 <= 40)
    assert batch.tolist() == [0, 1, 2, 3, 4] and scheduler.owner.tolist() == [0, 1, 2, 3, 3]
    kv = scheduler.kv_lengths(batch)
    assert [k.tolist() for k in kv] == [[31], [11], [21], [6, 8]]  # each rank its own requests, new token included
    scheduler.end_step(batch, start, 1.0)
    assert scheduler.step_log()["kv_tokens"][-1].tolist() == [31, 11, 21, 14]


def test_deepseek_helix_serves_long_contexts_with_balanced_kv():
    w = load_workload(MOONCAKE_SAMPLE, first=40, context_scale=8.29)  # longest ~1M tokens
    helix = serve(w, DEEPSEEK, make_layout(DEEPSEEK, 64, None, None, "helix"), TOPO)
    tp = serve(w, DEEPSEEK, make_layout(DEEPSEEK, 64, None, None, "tp"), TOPO)
    assert helix["long_context_steps"] > 0 and 1.0 <= helix["kv_imbalance"] < 1.05
    assert helix["kv_tokens_at_end"] == tp["kv_tokens_at_end"] == 0
    assert helix["generated_tokens"] == tp["generated_tokens"] == w.output_tokens
    # TP keeps the whole latent cache on each GPU, Helix 1/64 of it: far less to copy in
    assert helix["kv_transfer_mean_s"] < tp["kv_transfer_mean_s"] / 10


# --- the CLI ------------------------------------------------------------------------------------------------------
def test_model_workload_json():
    result = CliRunner().invoke(cli, ["model", "--model", "deepseek-r1", "--gpus", "64", "--workload",
                                      str(MOONCAKE_SAMPLE), "--first", "20", "--context-scale", "8.29", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"ttl_p50", "ttl_p90", "ttl_p99", "tokens_per_s_per_gpu", "max_batch", "kv_imbalance"} <= set(data)
    assert data["ttl_p50"] <= data["ttl_p90"] <= data["ttl_p99"] and data["requests"] == 20
    assert data["layout"]["kvp"] == 64 and len(data["per_request"]["queue_s"]) == 20


BAD_INPUTS = [
    ("bad.jsonl", mooncake_line(0) + mooncake_line(1, 3.5), "line 2: input_length must be an integer"),
    ("neg.jsonl", mooncake_line(0) + mooncake_line(1) + mooncake_line(2, -4), "line 3: negative length"),
    ("unsorted.jsonl", mooncake_line(0) + mooncake_line(900) + mooncake_line(800), "line 3: timestamp earlier"),
    ("empty.jsonl", "", "empty file"),
    ("short.csv", AZURE_HEADER + "2023-11-16 18:15:46.6805900,4\n", "line 2: expected 3 fields"),
]


@pytest.mark.parametrize("name, text, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_model_refuses_bad_workload_in_one_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    result = CliRunner().invoke(cli, ["model", "--workload", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"helix-mpi: error: {path}") and message in lines[0], lines


def test_run_refuses_bad_workload_before_any_rank_starts(tmp_path):
    path = write(tmp_path, "neg.jsonl", mooncake_line(0) + mooncake_line(1, -3))
    done = run_cli(["run", "-n", "2", "--workload", str(path), "-o", str(tmp_path / "t.h5")], timeout=60)
    assert done.returncode == 2 and not (tmp_path / "t.h5").exists()
    expected = f"helix-mpi: error: {path}: line 2: negative length (input_length=-3, output_length=2)"
    assert done.stderr.strip() == expected


@pytest.mark.parametrize("args, message", [
    (["--batch", "4"], "--batch cannot be used with --workload"),
    (["--time-scale", "0"], "time_scale must be a positive number"),
])
def test_model_refuses_bad_workload_options(args, message):
    result = CliRunner().invoke(cli, ["model", "--workload", str(MOONCAKE_SAMPLE), *args])
    assert result.exit_code == 2 and message in result.output


def test_model_says_a_trace_that_cannot_fit_does_not_fit():
    result = CliRunner().invoke(cli, ["model", "--workload", str(MOONCAKE_SAMPLE), "--kv-capacity", "50"])
    assert result.exit_code == 3  # does not fit (README "Does not fit"), not bad input
    assert "helix-mpi: DOES NOT FIT: request 97 needs" in result.output


def test_a_corrupt_gzip_trace_is_one_line(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00not gzip at all")
    with pytest.raises(WorkloadError, match="not a readable gzip file"):
        load_workload(path)


# --- pipeline stages ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n, kvp, tpa, pp", [("tiny", 4, None, None, 2), ("tiny", 8, 2, 2, 2),
                                                  ("tiny-mla-moe", 8, 4, 1, 2), ("llama-3.1-70b", 32, 4, 2, 4)])
def test_a_pipeline_step_is_what_model_places_stage_by_stage(name, n, kvp, tpa, pp):
    """Serving's step time under stages (the stage layout's layers + tail + sends, `PipelineSends`)
    equals `helix-mpi model`'s schedule, which places every stage's layers on its own ranks' clocks
    with each stage's receive after the previous stage's send (an independent path: analytic
    ._simulate_stages). Tolerance 1e-12: the same durations summed in another order."""
    from helix_mpi.analytic import local_kv_lengths, simulate
    from helix_mpi.config import RunConfig, load_model

    model = load_model(name)
    layout = make_layout(model, n, kvp, tpa, "pp", pp=pp)
    run = RunConfig(batch=3, context=5000, steps=1, layers=model.num_layers)
    placed = float(simulate(model, layout, run, TOPO)["end_s"].max())
    kv = [local_kv_lengths(layout, run, r, 0) for r in range(layout.world_size)]
    assert step_time(model, layout, kv, run.implementation(), True, TOPO) == pytest.approx(placed, rel=1e-12)
    timer = StepTimer(model, layout, True, TimeModel(TOPO, run.implementation()))
    assert timer(np.array(kv)) == pytest.approx(placed, rel=1e-12)


def test_pipeline_serving_runs_of_steps_equal_the_exact_loop_and_hold_more_kv():
    model = MODEL_PRESETS["tiny-mla-moe"]
    layout, stage = make_layout(model, 8, 4, 1, "pp", pp=2), make_layout(model, 4, 4, 1, "helix")
    w = random_workload(7, 10, 0.003, 400, 12)
    options = dict(tokens_per_block=4, max_batch=6)
    fast, exact = serve(w, model, layout, TOPO, **options), serve(w, model, layout, TOPO, exact=True, **options)
    assert fast["steps"] == exact["steps"] and fast["max_batch"] == exact["max_batch"]
    np.testing.assert_allclose(fast["ttl_s"], exact["ttl_s"], rtol=1e-12)
    unstaged = serve(w, model, stage, TOPO, **options)  # the same 4-rank layout holding every layer
    assert np.median(fast["ttl_s"]) > np.median(unstaged["ttl_s"])  # + the stage send, nothing gained per step
    assert (kv_capacity(model, layout, "fp4", TOPO).tokens.min()
            > kv_capacity(model, stage, "fp4", TOPO).tokens.min())  # each stage holds half the layers' KV


def test_model_serves_a_trace_under_pipeline_stages():
    out = run_cli(["model", "--model", "llama-3.1-70b", "--gpus", "16", "--strategy", "pp", "--pp", "2", "--workload",
                   str(MOONCAKE_SAMPLE), "--json"])
    data = json.loads(out.stdout)
    assert data["layout"]["pp"] == 2 and data["requests"] == 200 and data["ttl_p50"] > 0
