"""The measured tables of one GPU system (topologies/calibration/<system>/*.json), as grids.

Files are written by scripts/derive_calibration.py from NVIDIA AIConfigurator's measurements
(Apache-2.0; every file names its source files) or by `helix-mpi calibrate` from a user's own
nccl-tests logs and kernel CSVs. Latencies are stored in microseconds; grids hold seconds.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from .grid import Grid

MICRO = 1e-6
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


class TableError(ValueError):
    """A calibration table that cannot be used; the message is one line."""


def _nested_nan(values):
    if isinstance(values, list):
        return [_nested_nan(v) for v in values]
    return np.nan if values is None else values


def _grid(axes: list, latency_us) -> Grid:
    return Grid(axes, np.array(_nested_nan(latency_us), dtype=float) * MICRO)


class SystemTables:
    """Lazily loaded grids of one system's directory of tables."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise TableError(f"calibration tables not found: {self.directory} (regenerate with "
                             "`python scripts/derive_calibration.py`, or fix [calibration] tables in the topology)")

    def _load(self, name: str) -> dict | None:
        path = self.directory / f"{name}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TableError(f"{path}: not a readable JSON table ({exc})") from None
        if data.get("schema") != "helix_mpi.table/1":
            raise TableError(f"{path}: not a helix_mpi table (schema {data.get('schema')!r})")
        return data

    def sources(self) -> dict[str, str]:
        """Table name -> its source line, for every table present."""
        out = {}
        for path in sorted(self.directory.glob("*.json")):
            data = self._load(path.stem)
            files = ", ".join(data.get("source_files", []))
            out[path.stem] = f"{data.get('source', '?')}{files}"
        return out

    @functools.cached_property
    def gemm(self) -> dict[str, Grid]:
        """dtype -> Grid(m, n, k)."""
        data = self._load("gemm") or {"dtypes": {}}
        return {dtype: _grid([t["m"], t["n"], t["k"]], t["latency_us"]) for dtype, t in data["dtypes"].items()}

    @functools.cached_property
    def attention(self) -> dict[str, dict[tuple[int, int, int], Grid]]:
        """kv dtype -> (q heads, kv heads, head dim) -> Grid(batch, tokens)."""
        data = self._load("attention") or {"kv_dtypes": {}}
        out = {}
        for dtype, shapes in data["kv_dtypes"].items():
            out[dtype] = {tuple(int(x) for x in key.split("/")): _grid([t["batch"], t["tokens"]], t["latency_us"])
                          for key, t in shapes.items()}
        return out

    @functools.cached_property
    def mla(self) -> dict[str, dict[int, Grid]]:
        """kv dtype -> heads per GPU -> Grid(batch, tokens) (the MLA decode kernel alone)."""
        data = self._load("mla") or {"kv_dtypes": {}}
        out = {}
        for dtype, shapes in data["kv_dtypes"].items():
            by_heads = {}
            for key, t in sorted(shapes.items(), key=lambda item: _mla_key(item[0])[1]):
                heads, tp = _mla_key(key)  # several TP sizes per heads: keep the largest TP (heads x TP = the model's)
                by_heads[heads] = _grid([t["batch"], t["tokens"]], t["latency_us"])
            out[dtype] = by_heads
        return out

    @functools.cached_property
    def moe(self) -> dict[str, dict[tuple[int, ...], Grid]]:
        """dtype -> (hidden, inter, topk, experts, tp, ep) -> Grid(tokens)."""
        data = self._load("moe") or {"dtypes": {}}
        out = {}
        for dtype, shapes in data["dtypes"].items():
            out[dtype] = {_moe_key(key): _grid([t["tokens"]], t["latency_us"]) for key, t in shapes.items()}
        return out

    @functools.cached_property
    def nccl(self) -> dict[str, dict[int, Grid]]:
        """op -> ranks -> Grid(bytes)."""
        data = self._load("nccl") or {"ops": {}}
        return {op: {int(n): _grid([t["bytes"]], t["latency_us"]) for n, t in by_n.items()}
                for op, by_n in data["ops"].items()}

    @functools.cached_property
    def trtllm_allreduce(self) -> dict[int, Grid]:
        """ranks -> Grid(bytes) of TensorRT-LLM's custom all-reduce."""
        data = self._load("trtllm_allreduce") or {"ranks": {}}
        return {int(n): _grid([t["bytes"]], t["latency_us"]) for n, t in data["ranks"].items()}

    @functools.cached_property
    def moe_alltoall(self) -> dict:
        """The raw TensorRT-LLM NVLink MoE all-to-all table (GB200), or {}."""
        return self._load("moe_alltoall") or {}

    def raw(self, name: str) -> dict | None:
        return self._load(name)


def _mla_key(key: str) -> tuple[int, int]:
    heads, _, tp = key.partition("/")
    return int(heads), int(tp.removeprefix("tp") or 1)


def _moe_key(key: str) -> tuple[int, ...]:
    hidden, inter, topk, experts, tp, ep = key.split("/")
    return int(hidden), int(inter), int(topk), int(experts), int(tp.removeprefix("tp")), int(ep.removeprefix("ep"))
