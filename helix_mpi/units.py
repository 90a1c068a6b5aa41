"""Counts typed with a suffix: `--context 1M`, `--kv-capacity 512K`, distributions `p50:64K,p99:1M`.

Token counts are decimal, as people say them ("a 1M-token context" = 1,000,000 tokens): K = 1e3,
M = 1e6, G = 1e9. A binary suffix says so explicitly: Ki = 1024, Mi = 1024**2, Gi = 1024**3
(`128Ki` = 131,072, Llama 3.1's "128K" window). Decimal fractions are allowed with a suffix when
the result is a whole number (`1.5M` = 1,500,000). Byte sizes of `helix-mpi collectives --sizes`
stay binary (K = 1024, as nccl-tests), a separate parser (costmodel.parse_size).
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import click

TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9,
               "KI": 2**10, "MI": 2**20, "GI": 2**30}
_PATTERN = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|K|M|G)?\s*$", re.IGNORECASE)


def parse_count(text: str | int, what: str = "count") -> int:
    """'1M' -> 1000000, '128Ki' -> 131072, '4096' -> 4096, '1,000,000' -> 1000000; ValueError
    with one line otherwise (negative numbers are refused by the callers' range checks)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    raw = str(text).strip()
    negative = raw.startswith("-")
    match = _PATTERN.match(raw[1:] if negative else raw)
    if not match:
        raise ValueError(f"cannot read {what} {text!r}: use an integer with an optional suffix K, M, G "
                         "(decimal: 1M = 1,000,000) or Ki, Mi, Gi (binary: 1Ki = 1024)")
    number = match.group(1).replace("_", "").replace(",", "")
    try:
        value = Decimal(number) * TOKEN_UNITS[(match.group(2) or "").upper()]
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        raise ValueError(f"cannot read {what} {text!r}") from None
    if value != value.to_integral_value():
        raise ValueError(f"{what} {text!r} is not a whole number ({value})")
    return -int(value) if negative else int(value)


def format_count(value: int) -> str:
    """1000000 -> '1M', 131072 -> '128Ki', 1234 -> '1,234' (what parse_count reads back)."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value and value % scale == 0:
            return f"{value // scale}{suffix}"
    return f"{value:,}"


class TokenCount(click.ParamType):
    """A click option type for token counts with suffixes (module docstring)."""

    name = "TOKENS"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_count(value, "token count")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TOKENS = TokenCount()
