"""Whether an output path the user named can be written: a leaf (standard library only), so
every layer that writes a file the user named (a table, a checkpoint, a run's results) asks it
before the work, and the mistake costs nothing."""

from __future__ import annotations

import os
from pathlib import Path


def output_path_problem(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file (``folder``: made as an output
    directory), in one line that starts with the path, or None when it can: it exists as the
    other kind, or a folder above it is a file. Checked before the work, so the mistake costs
    nothing and nothing already written is touched."""
    out = Path(path)
    if folder and out.exists() and not out.is_dir():
        return f"{out} is a file, not a directory; name a directory to write into, or move the file away"
    if not folder and out.is_dir():
        return f"{out} is a directory; name a file to write (e.g. {out / 'table.csv'}), or move the directory away"
    for parent in out.parents:  # the nearest that exists decides
        if parent.exists():
            if not parent.is_dir():
                return f"{out} cannot be created: {parent} is a file; choose a path outside it, or move the file away"
            break
    return None
