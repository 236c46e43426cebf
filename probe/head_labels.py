"""How a head is named in text: "L{layer}H{head}" (layer and head from 0), as in the
literature's "L9H6" and TransformerLens demos' "L9H6"/"9.6". One home for writing and
reading the label, so every table, report, CLI line and dashboard title agrees."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import InputError

_LABEL = re.compile(r"[lL](\d+)[hH](\d+)")


def head_label(layer: int, head: int) -> str:
    """(1, 0) -> 'L1H0'."""
    return f"L{int(layer)}H{int(head)}"


def parse_head(text: str) -> tuple[int, int]:
    """'L1H0' (or 'l1h0') -> (1, 0); anything else is refused with the expected form."""
    m = _LABEL.fullmatch(text.strip())
    if not m:
        raise InputError(f"head {text!r}: write heads as LxHy (layer x, head y), e.g. L1H0")
    return int(m.group(1)), int(m.group(2))


def parse_heads(texts: Iterable[str] | None) -> list[tuple[int, int]]:
    """['L1H0', 'L2H3'] -> [(1, 0), (2, 3)]; None -> []."""
    return [parse_head(t) for t in texts or []]


def heads_text(heads: Iterable[tuple[int, int]], sep: str = ", ") -> str:
    """[(1, 0), (2, 3)] -> 'L1H0, L2H3'."""
    return sep.join(head_label(la, h) for la, h in heads)


def check_top(top: int) -> int:
    """How many heads to name or pick: a count of at least 1. Refused otherwise, because a
    slice's -2 would silently mean "all heads but two" and topk's -1 is a traceback."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be a positive integer (how many heads), not {top!r}")
    return top


def top_heads_text(table, column: str, top: int, fmt: str = ".3f", ascending: bool = False) -> str:
    """'L1H0 0.912, L2H3 0.871, ...': the ``top`` rows of a [layer, head, ...] table by ``column``."""
    rows = table.sort_values(column, ascending=ascending).head(check_top(top))
    return ", ".join(f"{head_label(r.layer, r['head'])} {r[column]:{fmt}}" for _, r in rows.iterrows())
