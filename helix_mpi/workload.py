"""Request traces for serving simulations: arrival time, prompt length and output length.

Two public formats (docs/design.md section 4):

- Mooncake JSON lines (.jsonl/.json): one object per line with `timestamp` (ms from the start of
  the trace), `input_length` and `output_length` (tokens); other keys (`hash_ids`, ...) are ignored.
- Azure LLM inference CSV (.csv): header `TIMESTAMP,ContextTokens,GeneratedTokens`; TIMESTAMP is a
  datetime such as `2023-11-16 18:15:46.6805900` (up to 9 fractional digits, optional `Z` or
  `+hh:mm` offset), converted to seconds from the first row.

Every row is validated; a bad row raises WorkloadError with one line naming the file and the line.
`arrival_s` stays relative to the file's first row, so windows are comparable across runs.

Options are applied in this order (documented, tested):
  1. time window: keep requests with start_s <= arrival_s < end_s;
  2. first N: keep the first `first` of those;
  3. context scale: input_tokens = round(input_tokens * context_scale) (e.g. x8.29 turns the first
     200 requests of the Mooncake conversation trace, longest 120,633 tokens, into contexts reaching
     1M tokens); output scale: output_tokens = max(1, round(output_tokens * output_scale)); time
     scale: arrival_s *= time_scale (e.g. 0.001 replays 72 s of trace in 72 ms, so that requests
     arrive while a tiny emulated model decodes).
"""
from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("mooncake", "azure")
MAX_INPUT_TOKENS = 2**40  # a prompt longer than a trillion tokens is a broken row, not a request
MAX_OUTPUT_TOKENS = 2**20  # each generated token is one decode step of the serving simulation
_EXTENSIONS = {".jsonl": "mooncake", ".json": "mooncake", ".csv": "azure"}
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MS_PER_S = 1000  # Mooncake timestamps are milliseconds


class WorkloadError(ValueError):
    """An unusable trace or option; the message is one line (file and line when a row is bad)."""


@dataclass(frozen=True)
class Request:
    """One request of a trace."""

    index: int  # 0-based data row of the file (stable under filtering)
    arrival_s: float  # seconds from the file's first row (x time_scale)
    input_tokens: int  # prompt tokens (KV computed by prefill), after context_scale
    output_tokens: int  # tokens to decode, >= 1


@dataclass(frozen=True)
class Workload:
    """The requests of a trace, sorted by arrival."""

    requests: tuple[Request, ...]
    source: str  # file it was read from, and the options applied

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last arrival."""
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)


# --- shared row checks ------------------------------------------------------------------------
def _where(path: Path, line: int) -> str:
    return f"{path}: line {line}"


def _integer(value: object, name: str, path: Path, line: int) -> int:
    """An integer (an integral float such as 12.0 is accepted), else WorkloadError."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise WorkloadError(f"{_where(path, line)}: {name} must be an integer, got {value!r}")
    return value


def _lengths(raw_in: object, raw_out: object, names: tuple[str, str], path: Path, line: int) -> tuple[int, int]:
    tokens_in, tokens_out = _integer(raw_in, names[0], path, line), _integer(raw_out, names[1], path, line)
    if tokens_in < 0 or tokens_out < 0:
        raise WorkloadError(f"{_where(path, line)}: negative length ({names[0]}={tokens_in}, {names[1]}={tokens_out})")
    if tokens_out == 0:
        raise WorkloadError(f"{_where(path, line)}: {names[1]} is 0: a request must decode at least one token")
    _check_sizes(tokens_in, tokens_out, names, _where(path, line))
    return tokens_in, tokens_out


def _check_sizes(tokens_in: int, tokens_out: int, names: tuple[str, str], where: str) -> None:
    if tokens_in > MAX_INPUT_TOKENS:
        raise WorkloadError(f"{where}: {names[0]} {tokens_in} is more than {MAX_INPUT_TOKENS:,} tokens")
    if tokens_out > MAX_OUTPUT_TOKENS:
        raise WorkloadError(f"{where}: {names[1]} {tokens_out} is more than {MAX_OUTPUT_TOKENS:,} tokens (one decode "
                            "step each)")


def _check_sorted(times: list[float], lines: list[int], path: Path) -> None:
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            raise WorkloadError(
                f"{_where(path, lines[i])}: timestamp earlier than line {lines[i - 1]}'s: "
                "the trace must be sorted by arrival time"
            )


# --- Mooncake JSON lines ------------------------------------------------------------------------
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def _mooncake_row(obj: object, path: Path, line: int) -> tuple[float, int, int]:
    if not isinstance(obj, dict):
        raise WorkloadError(f"{_where(path, line)}: expected a JSON object, got {type(obj).__name__}")
    for key in _MOONCAKE_KEYS:
        if key not in obj:
            raise WorkloadError(
                f"{_where(path, line)}: missing field {key!r} (Mooncake rows need {', '.join(_MOONCAKE_KEYS)})")
    stamp = obj["timestamp"]
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp) or stamp < 0:
        raise WorkloadError(f"{_where(path, line)}: timestamp must be a number of ms >= 0, got {stamp!r}")
    tokens_in, tokens_out = _lengths(obj["input_length"], obj["output_length"], ("input_length", "output_length"),
                                     path, line)
    return stamp / MS_PER_S, tokens_in, tokens_out


def _parse_line(text: str, path: Path, line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{_where(path, line)}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise WorkloadError(f"{_where(path, line)}: not valid JSON (nested too deeply)") from None


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading BOM dropped), or WorkloadError naming the first bad byte's line."""
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":  # a gzip-compressed trace (traces/mooncake_conversation.jsonl.gz)
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise WorkloadError(f"{path}: not a readable gzip file ({exc}): decompress it or pass the plain file") \
                from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise WorkloadError(f"{_where(path, line)}: not UTF-8 text (byte 0x{data[exc.start]:02x}): "
                            "save the trace as UTF-8") from None


def read_mooncake(path: Path) -> list[tuple[int, float, int, int]]:
    """(line, arrival_s, input, output) of every non-blank line."""
    numbered = [(n, text) for n, text in enumerate(_read_text(path).splitlines(), start=1) if text.strip()]
    numbers, lines = [n for n, _ in numbered], [t for _, t in numbered]
    try:  # fast path: all lines as one JSON array (~5x faster than a json.loads per line)
        objs = json.loads("[" + ",".join(lines) + "]")
    except (json.JSONDecodeError, RecursionError):
        objs = None
    if objs is None or len(objs) != len(lines):  # slow path names the bad line
        objs = [_parse_line(text, path, line) for text, line in zip(lines, numbers)]
    return [(line, *_mooncake_row(obj, path, line)) for obj, line in zip(objs, numbers)]


# --- Azure CSV ------------------------------------------------------------------------------------
_STAMP = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)
_TICKS = 10**9  # timestamps are kept as integer nanoseconds (exact for 7-digit .NET ticks)


def _stamp_ns(text: str, path: Path, line: int) -> int:
    """Integer nanoseconds since 0001-01-01 of an Azure TIMESTAMP (offset applied)."""
    match = _STAMP.match(text)
    if not match:
        raise WorkloadError(f"{_where(path, line)}: TIMESTAMP {text!r} is not like 2023-11-16 18:15:46.6805900")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        days = _dt.date(int(year), int(month), int(day)).toordinal()
    except ValueError as exc:
        raise WorkloadError(f"{_where(path, line)}: TIMESTAMP {text!r}: {exc}") from None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        raise WorkloadError(f"{_where(path, line)}: TIMESTAMP {text!r}: time out of range")
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "+" else 1  # 12:00+01:00 is 11:00 UTC
        digits = zone[1:].replace(":", "")
        seconds += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * _TICKS + (int(frac.ljust(9, "0")) if frac else 0)


def _azure_columns(header: list[str] | None, path: Path) -> list[int]:
    if header is None:
        raise WorkloadError(f"{path}: empty file: no header and no requests")
    names = [name.strip().lstrip("\ufeff") for name in header]
    missing = [col for col in AZURE_COLUMNS if col not in names]
    if missing:
        raise WorkloadError(
            f"{_where(path, 1)}: header lacks {', '.join(missing)}: expected {','.join(AZURE_COLUMNS)}"
        )
    return [names.index(col) for col in AZURE_COLUMNS]


def read_azure(path: Path) -> list[tuple[int, float, int, int]]:
    """(line, arrival_s, input, output) of every data row; arrival is from the first row."""
    with io.StringIO(_read_text(path), newline="") as handle:
        reader = csv.reader(handle)
        cols = _azure_columns(next(reader, None), path)
        width = max(cols) + 1
        rows, stamps = [], []
        for fields in reader:
            line = reader.line_num
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) < width:
                raise WorkloadError(f"{_where(path, line)}: expected {len(AZURE_COLUMNS)} fields, got {len(fields)}")
            stamp, raw_in, raw_out = (fields[c].strip() for c in cols)
            stamps.append(_stamp_ns(stamp, path, line))
            rows.append((line, *_lengths(_csv_int(raw_in), _csv_int(raw_out), AZURE_COLUMNS[1:], path, line)))
    origin = stamps[0] if stamps else 0
    return [(line, (ns - origin) / _TICKS, tokens_in, tokens_out)
            for (line, tokens_in, tokens_out), ns in zip(rows, stamps)]


def _csv_int(text: str) -> object:
    """The integer a CSV field spells, or the text itself (so the error shows it)."""
    try:
        return int(text)
    except ValueError:
        return text


# --- public API ---------------------------------------------------------------------------------------
def detect_format(path: Path | str, fmt: str | None = None) -> str:
    """'mooncake' or 'azure', from `fmt` or the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise WorkloadError(f"unknown trace format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes]
    suffix = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else (suffixes[-1] if suffixes else "")
    if suffix not in _EXTENSIONS:
        raise WorkloadError(
            f"{path}: cannot tell the trace format from the extension {suffix!r}: "
            "use .jsonl/.json (Mooncake) or .csv (Azure), optionally .gz, or pass the format explicitly"
        )
    return _EXTENSIONS[suffix]


def _check_options(start_s: float | None, end_s: float | None, first: int | None,
                   scales: dict[str, float]) -> None:
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and not math.isfinite(value):
            raise WorkloadError(f"{name} must be a finite number of seconds, got {value!r}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise WorkloadError(f"empty time window: end_s {end_s} must be greater than start_s {start_s}")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or first < 1):
        raise WorkloadError(f"first must be an integer >= 1, got {first!r}")
    for name, value in scales.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise WorkloadError(f"{name} must be a positive number, got {value!r}")


def _describe(path: Path, fmt: str, start_s, end_s, first, scales: dict[str, float]) -> str:
    parts = [f"{path} ({fmt})"]
    if start_s is not None or end_s is not None:
        parts.append(f"window [{start_s if start_s is not None else 0}, {end_s if end_s is not None else 'end'}) s")
    if first is not None:
        parts.append(f"first {first}")
    for name, value in scales.items():
        if value != 1:
            parts.append(f"{name.split('_')[0]} x{value:g}")
    return ", ".join(parts)


def _in_window(arrival_s: float, start_s: float | None, end_s: float | None) -> bool:
    return (start_s is None or arrival_s >= start_s) and (end_s is None or arrival_s < end_s)


def load_workload(path: Path | str, fmt: str | None = None, *, start_s: float | None = None,
                  end_s: float | None = None, first: int | None = None, context_scale: float = 1.0,
                  output_scale: float = 1.0, time_scale: float = 1.0) -> Workload:
    """Read a trace, then apply window -> first N -> scales (module docstring)."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    scales = {"context_scale": context_scale, "output_scale": output_scale, "time_scale": time_scale}
    _check_options(start_s, end_s, first, scales)
    if not path.is_file():
        raise WorkloadError(f"trace file {path} not found")
    rows = read_mooncake(path) if fmt == "mooncake" else read_azure(path)
    if not rows:
        raise WorkloadError(f"{path}: empty file: no requests")
    _check_sorted([row[1] for row in rows], [row[0] for row in rows], path)
    requests = [Request(i, arrival, n_in, n_out) for i, (_, arrival, n_in, n_out) in enumerate(rows)]
    requests = [r for r in requests if _in_window(r.arrival_s, start_s, end_s)]
    requests = requests[:first] if first is not None else requests
    if not requests:
        raise WorkloadError(f"{path}: no requests left in the window [{start_s}, {end_s}) s: widen it")
    requests = [_scaled(r, context_scale, output_scale, time_scale, path) for r in requests]
    return Workload(tuple(requests), _describe(path, fmt, start_s, end_s, first, scales))


def _scaled(request: Request, context_scale: float, output_scale: float, time_scale: float, path: Path) -> Request:
    """The request with the scales applied, still within the limits of a row."""
    arrival, tokens_in, tokens_out = (request.arrival_s * time_scale, request.input_tokens * context_scale,
                                      request.output_tokens * output_scale)
    where = f"{path}: request {request.index} (data row {request.index + 1})"
    if not all(math.isfinite(x) for x in (arrival, tokens_in, tokens_out)):
        raise WorkloadError(f"{where}: the scales overflow its arrival time or lengths: use smaller scales")
    tokens_in, tokens_out = round(tokens_in), max(1, round(tokens_out))
    _check_sizes(tokens_in, tokens_out, ("input tokens after --context-scale", "output tokens after --output-scale"),
                 where)
    return Request(request.index, arrival, tokens_in, tokens_out)
