"""What the bench scripts that time each variant in a fresh child process share: the child's
peak memory, quiet transformers logging, and running one child on a JSON spec.

A script runs itself as ``python SCRIPT --child SPEC.json``; the child prints one line
``RESULT {json}`` last, which `run_child` returns (with ``process_s``, the child's whole life,
start-up included), or ``{"error": ..., "stderr": ...}`` when it failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def quiet_transformers() -> None:
    """No progress bars, warnings or info lines from transformers in a timed child."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.simplefilter("ignore")


def run_child(script: str, spec: dict, spec_path: Path, timeout: float = 900, env: dict | None = None,
              echo: bool = False) -> dict:
    """Run ``script --child spec_path`` (spec written there first) with the project on
    PYTHONPATH and ``env`` added; ``echo`` prints the child's other stdout lines."""
    spec_path.write_text(json.dumps(spec))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "--child", str(spec_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})}, cwd=ROOT, timeout=timeout)
    total = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if echo:
        for ln in proc.stdout.splitlines():
            if not ln.startswith("RESULT "):
                print(ln)
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {err[:200]}", "stderr": proc.stderr[-3000:]}
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_s"] = total
    return res
