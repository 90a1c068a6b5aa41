"""Regenerate the sample outputs in README.md, or check that they still match what the tool prints.

Each sample is a fenced block between `<!-- sample:NAME -->` and `<!-- /sample -->` in README.md:
the command(s) as typed (`$ ...` lines) and what they print (stdout; stderr lines too where the
sample shows progress). `--check` reruns the samples and compares their *shape*: every number is
replaced by `#` and runs of spaces by one, so changes of modeled times do not matter, while a
changed line, label or order does (tests/test_readme.py runs the cheap ones).

    .venv/bin/python scripts/readme_samples.py                 # rewrite every sample in README.md
    .venv/bin/python scripts/readme_samples.py quickstart      # only these
    .venv/bin/python scripts/readme_samples.py --check models  # compare, exit 1 on a difference
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Sample:
    name: str
    commands: tuple[str, ...]  # as typed in the README, from the repository root
    head: int | None = None  # keep the first lines of the last command's stdout (then "...")
    tail: tuple[str, ...] = ()  # and the stdout lines starting with these
    stderr: bool = False  # show the last command's stderr lines (progress) after its stdout
    exit_code: bool = False  # show `$ echo $?` and the exit code
    in_tmp: bool = False  # run in an empty folder (the quick start writes helix-run.h5 there)


SAMPLES = {s.name: s for s in (
    Sample("quickstart", ("helix-mpi run -n 8",), head=20, tail=("reference check", "trace:"), stderr=True,
           in_tmp=True),
    Sample("models", ("helix-mpi models",)),
    Sample("advise", ("helix-mpi advise --model deepseek-r1 --context 1M --ttl-max 0.03",), head=14),
    Sample("notfit", ("helix-mpi model --model deepseek-r1 --strategy tp --gpus 8 --context 1M --batch 32",),
           head=3, exit_code=True),
    Sample("tour", ("helix-mpi run -n 8 --model small --kvp 4 --tpa 2 --batch 4 --context 4096 --steps 4 --layers 2 "
                    "--a2a-chunk 1 -o helix.h5 -q > /dev/null", "helix-mpi summarize helix.h5"), head=16, tail=("KV cache",),
           in_tmp=True),
    Sample("serving", ("helix-mpi model --model deepseek-r1 --gpus 64 --workload traces/mooncake_conversation_sample.jsonl "
                       "--context-scale 8.29 --ttl-slo 0.0105",)),
)}


def run_sample(sample: Sample) -> list[str]:
    """The lines of the sample block: commands and their (trimmed) output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "100",
           "HELIX_MPI_PROGRESS_S": "3600"}  # progress: the first and the last line only (a stable sample)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = tmp if sample.in_tmp else str(ROOT)
        for i, command in enumerate(sample.commands):
            lines.append(f"$ {command}")
            if command.endswith("> /dev/null"):
                command = command[:-len("> /dev/null")].strip()
                quiet = True
            else:
                quiet = False
            args = shlex.split(command)
            args[0] = str(BIN / args[0])
            done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)
            last = i == len(sample.commands) - 1
            if done.returncode not in (0, 3) or (done.returncode == 3 and not sample.exit_code):
                raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")
            if quiet:
                continue
            out = done.stdout.rstrip("\n").splitlines()
            if last and sample.head is not None and len(out) > sample.head:
                kept = out[:sample.head]
                rest = [line for line in out[sample.head:] if line.startswith(sample.tail)] if sample.tail else []
                out = kept + ["..."] + rest
            lines += out
            if last and sample.stderr:
                lines += [line for line in done.stderr.rstrip("\n").splitlines()]
            if last and sample.exit_code:
                lines += ["$ echo $?", str(done.returncode)]
    return lines


_BLOCK = re.compile(r"(<!-- sample:(?P<name>[\w-]+) -->\n```[^\n]*\n)(?P<body>.*?)(\n```\n<!-- /sample -->)", re.DOTALL)


def readme_blocks(text: str | None = None) -> dict[str, list[str]]:
    text = README.read_text() if text is None else text
    return {m.group("name"): m.group("body").splitlines() for m in _BLOCK.finditer(text)}


def write(names: list[str]) -> None:
    text = README.read_text()
    for name in names:
        body = "\n".join(run_sample(SAMPLES[name]))
        text, count = _BLOCK.subn(lambda m: m.group(1) + body + m.group(4) if m.group("name") == name else m.group(0),
                                  text)
        print(f"{name}: {len(body.splitlines())} lines", file=sys.stderr)
    README.write_text(text)


_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def shape(line: str) -> str:
    """A line with every number replaced by # and runs of blanks collapsed (what --check compares)."""
    return re.sub(r"\s+", " ", _NUMBER.sub("#", line)).strip()


def differences(name: str) -> list[str]:
    """Lines whose shape differs between README's sample and a fresh run (empty: they match)."""
    shown = readme_blocks().get(name)
    if shown is None:
        return [f"README.md has no sample {name!r}"]
    fresh = run_sample(SAMPLES[name])
    out = []
    for i in range(max(len(shown), len(fresh))):
        a = shape(shown[i]) if i < len(shown) else "<missing>"
        b = shape(fresh[i]) if i < len(fresh) else "<missing>"
        if a != b:
            out.append(f"{name} line {i + 1}: README {shown[i] if i < len(shown) else '<missing>'!r} "
                       f"vs now {fresh[i] if i < len(fresh) else '<missing>'!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"samples (default: all): {', '.join(SAMPLES)}")
    parser.add_argument("--check", action="store_true", help="compare with a fresh run instead of writing")
    args = parser.parse_args()
    names = args.names or list(SAMPLES)
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        parser.error(f"unknown sample {unknown[0]!r}: choose among {', '.join(SAMPLES)}")
    if args.check:
        problems = [p for name in names for p in differences(name)]
        print("\n".join(problems) or "README samples match")
        print(json.dumps({"samples": names, "differences": len(problems)}))
        sys.exit(1 if problems else 0)
    write(names)
    print(json.dumps({"samples": names, "written": str(README)}))


if __name__ == "__main__":
    main()
