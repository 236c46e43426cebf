"""What several commands print or write the same way."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line() -> str:
    """The command as the user typed it, for a result's sidecar ("how was this made?")."""
    return "probe " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_csv(table, output: str | Path) -> Path:
    """A table to the -o FILE the user named (its folder made)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out
