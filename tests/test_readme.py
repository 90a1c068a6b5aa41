"""The README stands alone: no file outside the repository, every command it shows parses, every
repository path it names exists, and its sample outputs still have the shape the tool prints
(scripts/readme_samples.py regenerates them; the cheap ones are rerun here)."""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import click
import pytest

from helix_mpi.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "traces" / "README.md"]}


def _samples_module():
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_samples"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


SAMPLES = _samples_module()


@pytest.mark.parametrize("path", list(DOCS), ids=[p.name for p in DOCS])
def test_no_reference_outside_the_repository(path):
    text = DOCS[path]
    assert "../shared" not in text and "/work/" not in text
    assert "DESIGN.md" not in text  # the design notes are docs/design.md


def test_design_notes_are_in_the_repository_with_the_mpi_facts():
    design = (ROOT / "docs" / "design.md").read_text()
    for heading in ("## 1. Helix in one page", "## 2. Architecture", "## 3. Time model", "## 4. Data on disk",
                    "## 5. What \"done\" means", "## 6. MPI on small machines"):
        assert heading in design
    for fact in ("18 s with 71 ranks waiting", "MPIR_CVAR_ENABLE_HEAVY_YIELD=1", "0.45 s", "about 45 ms",
                 "about 120 ms", "OMPI_ALLOW_RUN_AS_ROOT=1", ":oversubscribe", "fastmath=True", "0.23 s"):
        assert fact in design, fact
    assert "docs/design.md" in README


def _commands(text: str) -> list[list[str]]:
    """helix-mpi command lines of the fenced blocks (continuations joined, comments and redirections dropped)."""
    out = []
    for block in re.findall(r"```(?:sh)?\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"\s&&\s", line):
                part = part.split(" #")[0].split(" > ")[0].strip()
                if part.startswith(("helix-mpi ", ".venv/bin/helix-mpi ")) and "..." not in part:
                    out.append(shlex.split(part)[1:])
    return out


COMMANDS = _commands(README) + _commands((ROOT / "docs" / "serving.md").read_text())


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_command_shown_parses(args):
    name, *rest = args
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"no command {name!r}"
    try:
        command.make_context(name, list(rest))
    except click.exceptions.Exit:
        pass
    for arg in rest:  # repository files the examples use exist
        if arg.startswith(("traces/", "topologies/")):
            assert (ROOT / arg).exists(), arg


def test_readme_names_files_that_exist():
    for path in set(re.findall(r"\((docs/[\w./-]+|traces/[\w./-]+|topologies/[\w./-]+)\)", README)):
        assert (ROOT / path).exists(), path
    for path in set(re.findall(r"`((?:scripts|tests|helix_mpi|traces|docs)/[\w./-]+\.(?:py|md|jsonl|csv|png))`",
                               README)):
        assert (ROOT / path).exists(), path


def test_every_sample_is_in_the_readme():
    blocks = SAMPLES.readme_blocks()
    assert set(blocks) == set(SAMPLES.SAMPLES)
    for name, lines in blocks.items():
        assert lines[0] == f"$ {SAMPLES.SAMPLES[name].commands[0]}"
        assert len(lines) > len(SAMPLES.SAMPLES[name].commands), f"sample {name} was never generated"


def test_shape_ignores_numbers_only():
    assert SAMPLES.shape("TTL 0.227 ms,  4,401.25 tokens/s") == SAMPLES.shape("TTL 12.5 ms, 3 tokens/s")
    assert SAMPLES.shape("TTL 0.227 ms") != SAMPLES.shape("TTL 0.227 us")


@pytest.mark.parametrize("name", ["quickstart", "models", "notfit"])
def test_samples_match_what_the_tool_prints(name):
    assert SAMPLES.differences(name) == []


def test_advise_sample_first_line_is_the_answer():
    lines = SAMPLES.readme_blocks()["advise"]
    assert lines[1].startswith("best: ") and "tokens/s/GPU" in lines[1] and "non-Helix" in lines[1]
    assert lines[2].startswith("deepseek-r1 at 1,000,000 tokens on gb200-nvl72")
