#!/usr/bin/env python
"""Derive compact per-system calibration tables from NVIDIA AIConfigurator's measured GPU data.

Input: the gzip CSV tables in `--source` (default `../shared/data/calibration` next to the
repository root), extracted from AIConfigurator (github.com/ai-dynamo/aiconfigurator, Apache-2.0,
commit 095f58a51c4ca8e61b66ec108d86f223f8d559ce, `aic-core/src/aiconfigurator_core/systems/data/`).
Their README gives units and conventions; every latency there is in milliseconds.

Output: for each system (gb200, gb300, b200, h200, h100) a folder `--out/<system>/` with JSON tables
that the time model can load directly:

  gemm.json              GEMM latency over an m x n x k grid per dtype (m subset: decode sizes)
  attention.json         decode attention (torch_flow, no sliding window, beam 1), batch x tokens
  mla.json               MLA decode kernel alone over batch x tokens, per heads (and TP size)
  mla_module.json        whole MLA decode module of DeepSeek-V3 over batch x tokens
  moe.json               MoE expert computation (balanced routing) by tokens, per layer shape
  nccl.json              nccl-tests collectives (newest NCCL version per op and GPU count) by bytes
  trtllm_allreduce.json  TensorRT-LLM custom all-reduce by bytes, per GPU count
  moe_alltoall.json      TensorRT-LLM MoE dispatch/combine kernels by tokens (GB200 only)

How values are derived: rows are filtered as described per table, grouped by every key column
(system, shape, dtype, size), and each group's median latency is converted to microseconds and
rounded to 4 significant digits. Grids are nested lists in axis order with JSON null where the
source has no measurement. `KV tokens attended` is the cached tokens (`step`) plus the new one.
Collective sizes are converted from elements to bytes (2 bytes for half/bf16).

Also writes `e2e_tpot.csv` (selected columns of the end-to-end serving measurements, all rows,
for validation) and a README.md with the file list and sizes. Every file is written atomically.
Run: `python scripts/derive_calibration.py [--source DIR] [--out DIR]`.
"""
import argparse
import csv
import gzip
import json
import math
import os
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = (REPO_ROOT / ".." / "shared" / "data" / "calibration").resolve()
DEFAULT_OUT = REPO_ROOT / "topologies" / "calibration"

SCHEMA = "helix_mpi.table/1"
SOURCE = ("NVIDIA AIConfigurator (github.com/ai-dynamo/aiconfigurator, Apache-2.0, commit "
          "095f58a51c4ca8e61b66ec108d86f223f8d559ce), "
          "aic-core/src/aiconfigurator_core/systems/data/")
DERIVED_BY = "scripts/derive_calibration.py"
UNITS = "latency_us in microseconds; bytes in bytes"

# AIConfigurator system name -> output folder name
SYSTEMS = {"user": "user", "gb200": "gb200", "gb300": "gb300", "b200_sxm": "b200", "h200_sxm": "h200",
           "h100_sxm": "h100"}

DTYPE_NAMES = {"bfloat16": "bf16", "nvfp4": "fp4"}  # others (fp8, fp8_block, ...) unchanged
GEMM_M = {1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 512, 768, 1024, 1536, 2048, 3072,
          4096, 8192}
NCCL_OPS = {"all_reduce": "all_reduce", "all_gather": "all_gather",
            "reduce_scatter": "reduce_scatter", "alltoall": "all_to_all"}
HALF_BYTES = 2

E2E_COLUMNS = [
    "id", "backend", "backend_version", "model_path", "system", "precision", "mode", "isl", "osl",
    "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size",
    "moe_tp_size", "moe_ep_size", "decode_batch_size", "decode_num_workers", "decode_tp_size",
    "decode_pp_size", "decode_attention_dp_size", "decode_moe_tp_size", "decode_moe_ep_size",
    "silicon_ttft_ms", "silicon_tpot_ms",
]

TOKENS_NOTE = "tokens = KV tokens attended = step + 1 (step = tokens already in the KV cache)"
NCCL_NOTE = ("bytes is the nccl-tests size: all_reduce buffer, all_gather total output, "
             "reduce_scatter total input, all_to_all per-rank send buffer; measured with "
             "nccl-tests -w 40 -n 100 -c 0, no CUDA graph, out-of-place (see the source README)")
ALLREDUCE_NOTE = ("TensorRT-LLM's custom all-reduce (implementation trtllm, one-shot/two-shot "
                  "chosen by its AUTO strategy), bf16, timed inside a CUDA graph (5 calls per "
                  "graph); bytes = buffer size of one rank")


# ---------------------------------------------------------------------------- reading


@dataclass
class Bucket:
    """Rows of one system for one output table: latencies (ms) grouped by key."""

    rows_in: int = 0
    paths: set = field(default_factory=set)
    cells: dict = field(default_factory=lambda: defaultdict(list))
    seen: dict = field(default_factory=lambda: defaultdict(set))

    def medians_us(self) -> dict:
        """Median latency of every key in microseconds, 4 significant digits."""
        return {key: to_us(statistics.median(ms)) for key, ms in self.cells.items()}

    def duplicate_cells(self) -> int:
        return sum(1 for ms in self.cells.values() if len(ms) > 1)


def to_us(ms: float) -> float:
    return float(f"{ms * 1000.0:.4g}")


def dtype_name(raw: str) -> str:
    return DTYPE_NAMES.get(raw, raw)


def read_rows(source, table: str):
    """Yield the rows of a source table as dicts of strings: `<table>.csv.gz` in a folder of
    AIConfigurator extracts, or the files a `UserSource` assigns to that table."""
    if isinstance(source, UserSource):
        yield from source.rows(table)
        return
    with gzip.open(source / f"{table}.csv.gz", "rt", newline="") as fh:
        yield from csv.DictReader(fh)


class UserSource:
    """A user's own measurements (`helix-mpi calibrate --kernels`): CSV files (plain or gzip) in the
    columns of AIConfigurator's tables, each assigned to the table whose columns it has; every
    row belongs to one system, "user", whatever its `system` column says."""

    SIGNATURES = {  # table -> columns that identify its files
        "gemm_trtllm": ("gemm_dtype", "m", "n", "k", "latency"),
        "attention_decode_trtllm": ("num_key_value_heads", "head_dim", "step", "batch_size", "latency"),
        "mla_decode_trtllm": ("mla_dtype", "num_heads", "tp_size", "step", "latency"),
        "moe_trtllm": ("moe_dtype", "num_tokens", "inter_size", "moe_ep_size", "latency"),
    }
    DEFAULTS = {"system": "user", "source_path": "", "kernel_source": "user", "window_size": "0", "beam_width": "1",
                "attn_dtype": "bfloat16", "mla_dtype": "bfloat16", "isl": "1", "distribution": "balanced"}

    def __init__(self, paths):
        self.files: dict[str, list[Path]] = defaultdict(list)
        for path in map(Path, paths):
            self.files[self.table_of(path)].append(path)

    @classmethod
    def open(cls, path: Path):
        return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")

    @classmethod
    def table_of(cls, path: Path) -> str:
        try:
            with cls.open(path) as fh:
                columns = set(next(csv.reader(fh), []))
        except (OSError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: cannot read as CSV ({exc})") from None
        for table, needed in cls.SIGNATURES.items():
            if set(needed) <= columns:
                return table
        known = "; ".join(f"{t}: {', '.join(c)}" for t, c in cls.SIGNATURES.items())
        raise ValueError(f"{path}: not a kernel table this tool reads (columns needed, by table: {known})")

    def rows(self, table: str):
        for path in self.files.get(table, []):
            with self.open(path) as fh:
                for number, row in enumerate(csv.DictReader(fh), 2):
                    row = {**self.DEFAULTS, **{k: v for k, v in row.items() if v not in (None, "")}}
                    row["system"], row["source_path"] = "user", f"{path}:{number}"
                    latency = float(row["latency"]) if _is_number(row["latency"]) else math.nan
                    if not (math.isfinite(latency) and latency > 0):
                        raise ValueError(f"{path}:{number}: latency must be a positive number of milliseconds, "
                                         f"got {row['latency']!r}")
                    yield row


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def collect(rows, key_fn, keep=lambda row: True, seen=()) -> dict:
    """Group the kept rows per output system: {system: Bucket}; `seen` columns are recorded."""
    buckets = defaultdict(Bucket)
    for row in rows:
        if row["system"] not in SYSTEMS or not keep(row):
            continue
        bucket = buckets[row["system"]]
        bucket.rows_in += 1
        bucket.paths.add(row["source_path"])
        bucket.cells[key_fn(row)].append(float(row["latency"]))
        for column in seen:
            bucket.seen[column].add(row[column])
    return buckets


def seen_values(bucket: Bucket, column: str) -> list:
    """Distinct values of a column, as numbers when they all are numbers."""
    values = bucket.seen[column]
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(int(v) for v in values)
    return sorted(values)


# ---------------------------------------------------------------------------- shaping


def natural(text: str):
    """Sort key that orders embedded numbers numerically ("8/tp16" < "64/tp2" < "128/tp1")."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def nested(cells: dict, axes: list, prefix: tuple = ()):
    """Nested lists over the axes (first axis outermost); None where a cell is missing."""
    if len(prefix) == len(axes):
        return cells.get(prefix)
    return [nested(cells, axes, prefix + (value,)) for value in axes[len(prefix)]]


def grid(*names):
    """Leaf builder: {name: sorted axis values, ..., "latency_us": nested grid}."""
    def build(cells: dict) -> dict:
        axes = [sorted({key[i] for key in cells}) for i in range(len(names))]
        return {**dict(zip(names, axes)), "latency_us": nested(cells, axes)}
    return build


def labeled(label: str, inner):
    """Leaf builder for cells keyed (label value, *rest): {label: value, **inner(rest)}."""
    def build(cells: dict) -> dict:
        values = {key[0] for key in cells}
        if len(values) != 1:
            raise ValueError(f"several {label} values in one entry: {sorted(values)}")
        return {label: values.pop(), **inner({key[1:]: v for key, v in cells.items()})}
    return build


def tree(cells: dict, depth: int, leaf) -> dict:
    """Nest cells on their first `depth` key parts (string keys, natural order); leaf the rest."""
    groups = defaultdict(dict)
    for key, value in cells.items():
        groups[tuple(str(part) for part in key[:depth])][key[depth:]] = value
    root = {}
    for prefix in sorted(groups, key=lambda p: [natural(part) for part in p]):
        node = root
        for part in prefix[:-1]:
            node = node.setdefault(part, {})
        node[prefix[-1]] = leaf(groups[prefix])
    return root


# ---------------------------------------------------------------------------- tables
# Each table function returns {system: (bucket, body)}; body holds the table-specific fields.


def gemm_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "gemm_trtllm"),
        key_fn=lambda r: (dtype_name(r["gemm_dtype"]), r["kernel_source"],
                          int(r["m"]), int(r["n"]), int(r["k"])),
        keep=lambda r: int(r["m"]) in GEMM_M)
    leaf = labeled("kernel_source", grid("m", "n", "k"))
    return {system: (b, {
        "note": "latency_us[m][n][k]: C[m,n] = A[m,k] B[k,n]; m = tokens; only decode-sized m kept",
        "dtypes": tree(b.medians_us(), 1, leaf),
    }) for system, b in buckets.items()}


def attention_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "attention_decode_trtllm"),
        key_fn=lambda r: (dtype_name(r["kv_cache_dtype"]),
                          f'{r["num_heads"]}/{r["num_key_value_heads"]}/{r["head_dim"]}',
                          int(r["batch_size"]), int(r["step"]) + 1),
        keep=lambda r: (r["kernel_source"] == "torch_flow" and r["window_size"] == "0"
                        and r["beam_width"] == "1"),
        seen=("attn_dtype",))
    return {system: (b, {
        "filter": "kernel_source == torch_flow, window_size == 0, beam_width == 1",
        "key_note": "<num_heads>/<num_key_value_heads>/<head_dim>, heads on one GPU",
        "tokens_note": TOKENS_NOTE,
        "attn_dtype": seen_values(b, "attn_dtype"),
        "kv_dtypes": tree(b.medians_us(), 2, grid("batch", "tokens")),
    }) for system, b in buckets.items()}


def mla_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "mla_decode_trtllm"),
        key_fn=lambda r: (dtype_name(r["kv_cache_dtype"]), int(r["num_heads"]), int(r["tp_size"]),
                          int(r["batch_size"]), int(r["step"]) + 1),
        seen=("mla_dtype", "tp_size", "isl", "kernel_source"))
    tables = {}
    for system, b in buckets.items():
        with_tp = len(b.seen["tp_size"]) > 1
        cells = {(kv, f"{heads}/tp{tp}" if with_tp else str(heads), batch, tokens): us
                 for (kv, heads, tp, batch, tokens), us in b.medians_us().items()}
        tables[system] = (b, {
            "key_note": ("<num_heads>/tp<tp_size>" if with_tp else "<num_heads>")
            + ": num_heads = query heads on one GPU",
            "tokens_note": TOKENS_NOTE,
            "mla_dtype": seen_values(b, "mla_dtype"),
            "tp_size": seen_values(b, "tp_size"),
            "isl": seen_values(b, "isl"),
            "kernel_source": seen_values(b, "kernel_source"),
            "kv_dtypes": tree(cells, 2, grid("batch", "tokens")),
        })
    return tables


def mla_module_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "mla_decode_module_trtllm"),
        key_fn=lambda r: (dtype_name(r["kv_cache_dtype"]),
                          f'{r["num_heads"]}/{dtype_name(r["gemm_type"])}',
                          int(r["batch_size"]), int(r["step"]) + 1),
        seen=("model", "architecture", "mla_dtype", "tp_size", "isl", "kernel_source"))
    return {system: (b, {
        "key_note": ("<num_heads>/<gemm_type>: num_heads = query heads on one GPU; gemm_type = "
                     "projection precision (bf16, fp8_block, fp4 = nvfp4)"),
        "tokens_note": TOKENS_NOTE,
        **{column: seen_values(b, column)
           for column in ("model", "architecture", "mla_dtype", "tp_size", "isl", "kernel_source")},
        "kv_dtypes": tree(b.medians_us(), 2, grid("batch", "tokens")),
    }) for system, b in buckets.items()}


def moe_dtype_name(raw: str) -> str:
    """MoE dtypes keep their source names except bfloat16 -> bf16 (nvfp4 stays nvfp4)."""
    return "bf16" if raw == "bfloat16" else raw


def moe_key(r: dict) -> str:
    return (f'{r["hidden_size"]}/{r["inter_size"]}/{r["topk"]}/{r["num_experts"]}'
            f'/tp{r["moe_tp_size"]}/ep{r["moe_ep_size"]}')


def moe_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "moe_trtllm"),
        key_fn=lambda r: (moe_dtype_name(r["moe_dtype"]), moe_key(r),
                          r["kernel_source"], int(r["num_tokens"])),
        keep=lambda r: r["distribution"] == "balanced")
    return {system: (b, {
        "filter": "distribution == balanced",
        "key_note": ("<hidden_size>/<inter_size>/<topk>/<num_experts>"
                     "/tp<moe_tp_size>/ep<moe_ep_size>"),
        "tokens_note": "tokens = num_tokens entering the MoE layer on one GPU",
        "dtypes": tree(b.medians_us(), 2, labeled("kernel_source", grid("tokens"))),
    }) for system, b in buckets.items()}


def version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split("."))


def nccl_version(row: dict) -> str:
    """NCCL version = the folder holding the file (.../comm/nccl/<version>/nccl_perf.parquet)."""
    return row["source_path"].split("/")[-2]


def newest_nccl(rows: list) -> dict:
    """{(system, op, num_gpus): newest NCCL version measured}."""
    newest = {}
    for r in rows:
        key = (r["system"], r["op_name"], r["num_gpus"])
        if key not in newest or version_tuple(nccl_version(r)) > version_tuple(newest[key]):
            newest[key] = nccl_version(r)
    return newest


def nccl_table(source: Path) -> dict:
    rows = [r for r in read_rows(source, "comm_nccl") if r["nccl_dtype"] == "half"]
    newest = newest_nccl(rows)
    buckets = collect(
        rows,
        key_fn=lambda r: (NCCL_OPS[r["op_name"]], int(r["num_gpus"]), nccl_version(r),
                          int(r["message_size"]) * HALF_BYTES),
        keep=lambda r: nccl_version(r) == newest[(r["system"], r["op_name"], r["num_gpus"])])
    versions = defaultdict(set)
    for r in rows:
        versions[r["system"]].add(nccl_version(r))
    return {system: (b, {
        "filter": "nccl_dtype == half; per (op, num_gpus) only the newest NCCL version",
        "note": NCCL_NOTE,
        "version_note": ("nccl_version is the folder in source_path; the CSV's version column "
                         "is not used"),
        "nccl_versions_available": sorted(versions[system], key=version_tuple),
        "ops": tree(b.medians_us(), 2, labeled("nccl_version", grid("bytes"))),
    }) for system, b in buckets.items()}


def trtllm_allreduce_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "comm_trtllm_allreduce"),
        key_fn=lambda r: (int(r["num_gpus"]), int(r["message_size"]) * HALF_BYTES),
        keep=lambda r: r["allreduce_dtype"] == "bfloat16",
        seen=("allreduce_dtype", "implementation"))
    return {system: (b, {
        "note": ALLREDUCE_NOTE,
        "allreduce_dtype": seen_values(b, "allreduce_dtype"),
        "implementation": seen_values(b, "implementation"),
        "ranks": tree(b.medians_us(), 1, grid("bytes")),
    }) for system, b in buckets.items()}


def moe_alltoall_table(source: Path) -> dict:
    buckets = collect(
        read_rows(source, "comm_trtllm_moe_alltoall"),
        key_fn=lambda r: (moe_dtype_name(r["moe_dtype"]), r["kernel_source"],
                          r["op_name"], int(r["moe_ep_size"]), int(r["num_tokens"])),
        keep=lambda r: r["distribution"] == "balanced",
        seen=("hidden_size", "topk", "num_experts", "distribution", "moe_dtype"))
    tables = {}
    for system, b in buckets.items():
        cells = b.medians_us()
        leaf = grid("tokens")
        if len({key[0] for key in cells}) > 1:
            data = {"dtypes": {dtype: {"kernels": kernels}
                               for dtype, kernels in tree(cells, 4, leaf).items()}}
        else:
            data = {"kernels": tree({key[1:]: v for key, v in cells.items()}, 3, leaf)}
        tables[system] = (b, {
            "filter": "distribution == balanced",
            "key_note": ("kernels.<kernel_source>.<op_name>.<moe_ep_size>; "
                         "tokens = num_tokens per rank"),
            **{column: seen_values(b, column)
               for column in ("hidden_size", "topk", "num_experts", "distribution")},
            **data,
        })
    return tables


TABLES = {
    "gemm": gemm_table,
    "attention": attention_table,
    "mla": mla_table,
    "mla_module": mla_module_table,
    "moe": moe_table,
    "nccl": nccl_table,
    "trtllm_allreduce": trtllm_allreduce_table,
    "moe_alltoall": moe_alltoall_table,
}

FILE_DOCS = {
    "gemm.json": "GEMM (`gemm_trtllm`): `dtypes.<bf16|fp8|fp8_block|fp4>` with `kernel_source`, "
                 "axes `m`, `n`, `k` and `latency_us[m][n][k]`; m limited to decode sizes 1..8192.",
    "attention.json": "Decode attention (`attention_decode_trtllm`, torch_flow, window 0, beam 1): "
                      "`kv_dtypes.<bf16|fp8>.<heads>/<kv_heads>/<head_dim>` with axes `batch`, "
                      "`tokens` (KV tokens attended = step + 1) and `latency_us[batch][tokens]`.",
    "mla.json": "MLA decode kernel alone (`mla_decode_trtllm`): `kv_dtypes.<kv>.<heads>/tp<tp>`, "
                "same batch x tokens grid.",
    "mla_module.json": "Whole MLA decode module of DeepSeek-V3 (`mla_decode_module_trtllm`): "
                       "`kv_dtypes.<kv>.<heads>/<gemm_type>`, same batch x tokens grid.",
    "moe.json": "MoE expert computation (`moe_trtllm`, balanced routing): "
                "`dtypes.<moe_dtype>.<hidden>/<inter>/<topk>/<experts>/tp<tp>/ep<ep>` with "
                "`kernel_source`, `tokens`, `latency_us`.",
    "nccl.json": "nccl-tests collectives (`comm_nccl`, half): `ops.<op>.<num_gpus>` with "
                 "`nccl_version` (newest measured), `bytes`, `latency_us`.",
    "trtllm_allreduce.json": "TensorRT-LLM custom all-reduce (`comm_trtllm_allreduce`, bf16, "
                             "CUDA graph): `ranks.<num_gpus>` with `bytes`, `latency_us`.",
    "moe_alltoall.json": "TensorRT-LLM MoE all-to-all kernels (`comm_trtllm_moe_alltoall`): "
                         "`dtypes.<dtype>.kernels.<kernel_source>.<op_name>.<ep_size>` with "
                         "`tokens`, `latency_us`.",
}


# ---------------------------------------------------------------------------- writing


def write_atomic(path: Path, text: str) -> int:
    """Write text to path via a temporary file in the same folder; return the size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def header(table: str, system: str, bucket: Bucket) -> dict:
    return {
        "schema": SCHEMA,
        "table": table,
        "system": SYSTEMS[system],
        "aiconfigurator_system": system,
        "source": SOURCE,
        "source_files": sorted(bucket.paths),
        "derived_by": DERIVED_BY,
        "rows_in": bucket.rows_in,
        "units": UNITS,
        "duplicate_cells": bucket.duplicate_cells(),
    }


def write_tables(source: Path, out: Path) -> list:
    """Derive and write every table; return [(relative path, rows_in, values, bytes)]."""
    written = []
    for table, derive in TABLES.items():
        for system, (bucket, body) in sorted(derive(source).items()):
            path = out / SYSTEMS[system] / f"{table}.json"
            doc = {**header(table, system, bucket), **body}
            size = write_atomic(path, json.dumps(doc, separators=(",", ":")) + "\n")
            written.append((path.relative_to(out).as_posix(), bucket.rows_in, len(bucket.cells),
                            size))
            print(f"{written[-1][0]:<28} rows_in={bucket.rows_in:>7} values={len(bucket.cells):>6}"
                  f" bytes={size:>7}  (cells with duplicates: {bucket.duplicate_cells()})")
    return written


def write_e2e(source: Path, out: Path) -> tuple:
    """Copy the selected columns of all end-to-end rows to a plain CSV.

    Returns the summary entry and the distinct systems, models and backends (for the README).
    """
    rows = list(read_rows(source, "e2e_tpot_dev"))
    missing = [c for c in E2E_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"e2e_tpot_dev lacks columns {missing}")
    lines = [",".join(E2E_COLUMNS)]
    for row in rows:
        lines.append(",".join(csv_field(row[c]) for c in E2E_COLUMNS))
    size = write_atomic(out / "e2e_tpot.csv", "\n".join(lines) + "\n")
    print(f"{'e2e_tpot.csv':<28} rows_in={len(rows):>7} values={len(rows):>6} bytes={size:>7}")
    content = {column: sorted({row[column] for row in rows})
               for column in ("system", "model_path", "backend")}
    return ("e2e_tpot.csv", len(rows), len(rows), size), content


def csv_field(value: str) -> str:
    """Quote a CSV field only when it needs it."""
    if any(ch in value for ch in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def size_table(written: list) -> str:
    """Markdown table: one row per JSON file name, one column per system, sizes in KB."""
    sizes = {name: size for name, _, _, size in written}
    systems = [s for s in SYSTEMS.values() if s != "user"]
    lines = ["| file | " + " | ".join(systems) + " |", "|---|" + "---:|" * len(systems)]
    for table in TABLES:
        cells = [f"{sizes[f'{s}/{table}.json'] / 1024:.0f} KB" if f"{s}/{table}.json" in sizes
                 else "-" for s in systems]
        lines.append(f"| `{table}.json` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme(written: list, e2e_content: dict) -> str:
    docs = "\n".join(f"- `{name}`: {text}" for name, text in FILE_DOCS.items())
    e2e = next(size for name, _, _, size in written if name == "e2e_tpot.csv")
    e2e_list = {column: ", ".join(f"`{v}`" for v in values)
                for column, values in e2e_content.items()}
    return f"""# Calibration tables (generated)

Measured GPU latencies for calibrating the helix_mpi time model, derived from NVIDIA
AIConfigurator's performance database: github.com/ai-dynamo/aiconfigurator, commit
095f58a51c4ca8e61b66ec108d86f223f8d559ce, folder
`aic-core/src/aiconfigurator_core/systems/data/`, licensed Apache-2.0. Each JSON file names the
source files it used in `source_files`.

**Do not edit these files by hand.** They are regenerated by

    python scripts/derive_calibration.py [--source DIR] [--out DIR]

from the gzip CSV extracts in `../shared/data/calibration` (see the README there for the
collectors' conventions).

## Conventions

- One folder per system: `gb200`, `gb300`, `b200` (AIConfigurator `b200_sxm`), `h200`
  (`h200_sxm`), `h100` (`h100_sxm`).
- Every JSON file starts with a common header: `schema` ({SCHEMA}), `table`, `system`,
  `aiconfigurator_system`, `source`, `source_files`, `derived_by`, `rows_in` (source rows of
  this system that passed the table's filters), `units`, `duplicate_cells` (cells measured
  several times; the median is stored), then table-specific notes and the data.
- `latency_us` is in microseconds (source milliseconds x 1000, rounded to 4 significant digits),
  the median over duplicate rows; `bytes` is in bytes. Grids are nested lists in the order of
  their axes; `null` marks a cell the source did not measure.
- `tokens` in attention and MLA tables is the number of KV tokens attended: step + 1, where step
  is the tokens already in the KV cache.
- Dtype names: bfloat16 -> `bf16` everywhere; nvfp4 -> `fp4` in `gemm.json` and in the
  gemm_type of `mla_module.json` keys; all other names (fp8, fp8_block, nvfp4 in the MoE tables,
  w4a8_mxfp4_mxfp8, ...) as in the source.

## Files

{docs}
- `e2e_tpot.csv` ({e2e / 1024:.0f} KB): every row of AIConfigurator's measured end-to-end serving
  runs (source table `e2e_tpot_dev`), values copied verbatim, columns limited to the serving
  configuration, `silicon_ttft_ms` (time to first token) and `silicon_tpot_ms` (time per output
  token), both in milliseconds; for checking the modeled token-to-token latency end to end.
  Systems: {e2e_list["system"]}; models: {e2e_list["model_path"]}; backends:
  {e2e_list["backend"]}.

## Sizes

{size_table(written)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="folder with AIConfigurator *.csv.gz (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: %(default)s)")
    args = parser.parse_args()
    start = time.perf_counter()
    written = write_tables(args.source, args.out)
    e2e_entry, e2e_content = write_e2e(args.source, args.out)
    written.append(e2e_entry)
    size = write_atomic(args.out / "README.md", readme(written, e2e_content))
    print(f"{'README.md':<28} bytes={size:>7}")
    print(json.dumps({"files": len(written) + 1,
                      "max_bytes": max(s for *_, s in written),
                      "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
