"""Read nccl-tests output (all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf).

The `*_perf` table has one row per size with the columns named in its header: size (B), count
(elements), type, redop, [root,] then time (us), algbw, busbw (GB/s) and #wrong (or error) for
out-of-place, and again for in-place (NVIDIA/nccl-tests src/common.cu, print_header). We keep
the out-of-place time, as NVIDIA AIConfigurator does. The collective comes from the log itself
("# Collective test starting: all_reduce_perf", or the command line it echoes) or from the file
name; the rank count from the "#  Rank  r Group ..." lines, or from the caller.

Anything unusable (another op than claimed, missing columns, NaN or negative times, sizes that do
not increase, no rank count) raises NcclTestsError with one line saying what and where.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPS = {"all_reduce": "all_reduce", "allreduce": "all_reduce", "all_gather": "all_gather", "allgather": "all_gather",
       "reduce_scatter": "reduce_scatter", "reducescatter": "reduce_scatter", "alltoall": "all_to_all",
       "all_to_all": "all_to_all"}
_OP_PATTERN = re.compile(r"(all_reduce|allreduce|all_gather|allgather|reduce_scatter|reducescatter|alltoall|all_to_all"
                         r"|sendrecv|broadcast|reduce|gather|scatter|hypercube)_perf")
_RANK_PATTERN = re.compile(r"^#\s*Rank\s+(\d+)\s+Group", re.MULTILINE)
REQUIRED = ("size", "time")


class NcclTestsError(ValueError):
    """An nccl-tests log that cannot be used; the message is one line."""


@dataclass(frozen=True)
class NcclTestsLog:
    path: str
    op: str  # all_reduce, all_gather, reduce_scatter or all_to_all
    ranks: int
    sizes: np.ndarray  # bytes, increasing
    seconds: np.ndarray  # out-of-place time


def _op_of(text: str, path: Path) -> str | None:
    found = set(_OP_PATTERN.findall(text)) or set(_OP_PATTERN.findall(path.name))
    if not found:
        return None
    if len(found) > 1:
        raise NcclTestsError(f"{path}: the log names several collectives ({', '.join(sorted(found))}): one per file")
    name = found.pop()
    if name not in OPS:
        raise NcclTestsError(f"{path}: {name}_perf is not a collective this model times "
                             f"(use all_reduce, all_gather, reduce_scatter or alltoall)")
    return OPS[name]


def _header(lines: list[str], path: Path) -> tuple[int, dict[str, int]]:
    """(line index of the column header, column name -> field index of the out-of-place values)."""
    for i, line in enumerate(lines):
        words = line.lstrip("#").split()
        if "size" in words and "time" in words:
            columns = {}
            for position, word in enumerate(words):
                columns.setdefault(word, position)  # the first time/algbw/busbw: out-of-place
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise NcclTestsError(f"{path}: the perf table has no {missing[0]!r} column")
            return i, columns
    raise NcclTestsError(f"{path}: no nccl-tests perf table (a header line with 'size' and 'time' columns)")


def _rows(lines: list[str], columns: dict[str, int], path: Path) -> tuple[np.ndarray, np.ndarray]:
    sizes, seconds = [], []
    width = max(columns.values()) + 1
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or line.lstrip().startswith("#") or not words[0].isdigit():
            continue
        if len(words) < width:
            raise NcclTestsError(f"{path}: line {number} has {len(words)} fields, the header {width}: "
                                 "missing columns")
        try:
            size, time_us = float(words[columns["size"]]), float(words[columns["time"]])
        except ValueError:
            raise NcclTestsError(f"{path}: line {number}: size or time is not a number") from None
        if not (math.isfinite(time_us) and time_us > 0):
            raise NcclTestsError(f"{path}: line {number}: time {words[columns['time']]} is not a positive number")
        if sizes and size <= sizes[-1]:
            raise NcclTestsError(f"{path}: line {number}: size {size:.0f} does not increase (after {sizes[-1]:.0f})")
        sizes.append(size)
        seconds.append(time_us * 1e-6)
    if not sizes:
        raise NcclTestsError(f"{path}: the perf table has no rows")
    return np.array(sizes), np.array(seconds)


def read_nccl_tests(path: str | Path, op: str | None = None, ranks: int | None = None) -> NcclTestsLog:
    """Parse one nccl-tests log; `op` (if given) must agree with the log, `ranks` is used when the
    log has no "# Rank" lines."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise NcclTestsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    logged = _op_of(text, path)
    claimed = OPS.get(op, op) if op else None
    if claimed and logged and claimed != logged:
        raise NcclTestsError(f"{path}: the log is {logged} but {claimed} was claimed")
    which = claimed or logged
    if which is None:
        raise NcclTestsError(f"{path}: cannot tell which collective it measures: name it *_perf or pass the op")
    lines = text.splitlines()
    start, columns = _header(lines, path)
    sizes, seconds = _rows(lines[start + 1:], columns, path)
    logged_ranks = len(set(_RANK_PATTERN.findall(text)))
    count = logged_ranks or ranks
    if not count or count < 1:
        raise NcclTestsError(f"{path}: no '# Rank' lines: pass the rank count (--ranks N)")
    return NcclTestsLog(str(path), which, int(count), sizes, seconds)
