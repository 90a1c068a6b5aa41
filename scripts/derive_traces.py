#!/usr/bin/env python
"""Regenerate traces/mooncake_conversation.jsonl.gz from the Mooncake conversation trace.

Source: kvcache-ai/Mooncake, FAST25-release/traces/conversation_trace.jsonl (12,031 requests from
one hour of online traffic, released with the Mooncake paper, FAST'25). Kept: `timestamp` (ms),
`input_length`, `output_length`; dropped: `hash_ids` (prefix-cache block ids, unused here). Written
gzip-compressed (mtime 0, so the file is reproducible) under a temporary name, then renamed.
Prints the row count and sizes, and a final JSON line.

    python scripts/derive_traces.py PATH/TO/conversation_trace.jsonl
"""
import gzip
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TARGET = os.path.join(ROOT, "traces", "mooncake_conversation.jsonl.gz")
KEPT = ("timestamp", "input_length", "output_length")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/derive_traces.py PATH/TO/conversation_trace.jsonl")
    source = sys.argv[1]
    with open(source, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    text = "".join(json.dumps({k: row[k] for k in KEPT}, separators=(", ", ": ")) + "\n" for row in rows)
    with open(TARGET + ".partial", "wb") as out:
        out.write(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    os.replace(TARGET + ".partial", TARGET)
    size = os.path.getsize(TARGET)
    print(f"{len(rows):,} requests -> {TARGET} ({size:,} bytes, from {os.path.getsize(source):,})")
    print(json.dumps({"requests": len(rows), "bytes": size, "source_bytes": os.path.getsize(source)}))


if __name__ == "__main__":
    main()
