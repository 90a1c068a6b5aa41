"""Figures of runs and traces, one module per job (the names below are importable from here too):

- `events`: `RunShape` and the figures of a run from its events, in memory or streamed
  (`EventStats`, `summarize`, step times, TTL); `codes`: string columns as integer codes;
- `tracemeta`: a trace file's root attributes (`TraceMeta`, `read_meta`) and event chunks, read
  and checked; the layout and run configuration rebuilt from their dicts;
- `summary`: `summarize_trace`, served, KV-cache and memory figures, `compare_summaries`;
- `select`: events by step / layer / rank ranges; `validate`: every problem of a trace listed;
- `text`: the tables printed on the terminal.

None of them imports h5py at import time (trace.py imports it when a file is opened), so the
`run` ranks, which import `EventStats`, do not load it before rank 0 writes.
"""
from .codes import Vocabulary
from .events import (BY_KEYS, GB, US, EventStats, RunShape, layer_times_from_ends, shape_of, step_times,
                     step_times_from_ends, summarize, ttl_seconds)
from .select import Selection, check_selection, iter_selected, parse_ranges
from .summary import (COMPARED, COMPARED_CONFIG, compare_summaries, describe_run, kv_bytes_per_token_per_layer,
                      kv_figures, memory_figures, served_figures, summarize_trace)
from .text import (exchange_label, format_by_table, format_compare, format_summary, format_trace_summary, human_bytes,
                   step_time_label)
from .tracemeta import (SUMMARY_CHUNK, TraceMeta, check_event_rows, count_events, iter_event_chunks, layout_from_dict,
                        read_kv_tokens, read_meta, run_config_from_dict)
from .validate import validate_trace

__all__ = ["BY_KEYS", "COMPARED", "COMPARED_CONFIG", "GB", "SUMMARY_CHUNK", "US", "EventStats", "RunShape", "Selection",
           "TraceMeta", "Vocabulary", "check_event_rows", "check_selection", "compare_summaries", "count_events",
           "describe_run", "exchange_label", "format_by_table", "format_compare", "format_summary",
           "format_trace_summary", "human_bytes", "iter_event_chunks", "iter_selected", "kv_bytes_per_token_per_layer",
           "kv_figures", "layer_times_from_ends", "layout_from_dict", "memory_figures", "parse_ranges",
           "read_kv_tokens", "read_meta", "run_config_from_dict", "served_figures", "shape_of", "step_time_label",
           "step_times", "step_times_from_ends", "summarize", "summarize_trace", "ttl_seconds", "validate_trace"]
