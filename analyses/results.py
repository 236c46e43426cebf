"""Where analyses keep their results: next to the run they were computed from, so the
dashboard and later sessions find them (RUN/analyses/NAME.csv)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def save_result(run_path: str | Path, name: str, table: pd.DataFrame) -> Path:
    """Write an analysis table next to the run (RUN/analyses/NAME.csv), atomically."""
    out_dir = Path(run_path) / "analyses"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{name}.csv"
    tmp = out.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out
