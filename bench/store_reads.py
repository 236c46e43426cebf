"""Read latency of the activation store's layouts: the measurement behind its chunk shapes.

Records MiniLM activations on WinoBias prompts once per layout, then times the reads the
dashboard and the analyses make:
  - one (prompt, layer, head) attention pattern      (dashboard: head view)
  - one prompt's residual stream at one layer        (dashboard: layer view)
  - one layer's residual for every token of the run  (analyses: a probe's design matrix)
Layouts: uncompressed contiguous datasets (the default), and chunked + compressed (lz4,
gzip) with several attention chunk sizes. Reads run cold-ish (files reopened per layout,
random order) and warm (repeated); medians are printed.

    python bench/store_reads.py [--prompts 600] [--repeats 200]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
import probe  # noqa: E402
import probe.store as store  # noqa: E402


def time_reads(run_dir: Path, repeats: int, seed: int = 0) -> dict[str, float]:
    run = probe.open(run_dir)
    rng = random.Random(seed)
    n_layers, n_heads = run.config["n_layers"], run.config["n_heads"]
    out = {}
    samples = []
    for _ in range(repeats):
        p, layer, head = rng.randrange(run.n_prompts), rng.randrange(n_layers), rng.randrange(n_heads)
        t = time.perf_counter()
        run.pattern(p, layer, head)
        samples.append(time.perf_counter() - t)
    out["pattern (1 head) ms"] = 1e3 * statistics.median(samples)
    samples = []
    for _ in range(repeats):
        p, layer = rng.randrange(run.n_prompts), rng.randrange(n_layers)
        t = time.perf_counter()
        run.prompt_activation(f"blocks.{layer}.hook_resid_post", p)
        samples.append(time.perf_counter() - t)
    out["prompt resid ms"] = 1e3 * statistics.median(samples)
    samples = []
    for layer in range(n_layers):
        t = time.perf_counter()
        run.activations(f"blocks.{layer}.hook_resid_post")
        samples.append(time.perf_counter() - t)
    out["layer resid, all tokens ms"] = 1e3 * statistics.median(samples)
    run.close()
    size = sum(f.stat().st_size for f in run_dir.rglob("*.h5"))
    out["MiB on disk"] = size / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    model = models.load("minilm")
    prompts = probe.load_prompts("winobias")[: args.prompts]
    names = ["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"]
    layouts = [("none (contiguous)", "none", store.ATTN_CHUNK)]
    for chunk in (8192, 32768, 131072):
        layouts.append((f"lz4, attn chunk {chunk}", "lz4", chunk))
    layouts.append(("gzip-1, attn chunk 32768", "gzip", 32768))
    tmp = Path(tempfile.mkdtemp(prefix="store_reads_"))
    print(f"MiniLM, {len(prompts)} WinoBias prompts, hooks {names}, {args.repeats} random reads per kind")
    rows = []
    try:
        default_chunk = store.ATTN_CHUNK
        for label, comp, chunk in layouts:
            store.ATTN_CHUNK = chunk
            out = tmp / label.replace(" ", "_").replace(",", "")
            t = time.perf_counter()
            probe.record(model, prompts, out, names=names, batch_size=32, compression=comp, progress=False)
            rec = time.perf_counter() - t
            rows.append((label, rec, time_reads(out, args.repeats)))
            shutil.rmtree(out)
        store.ATTN_CHUNK = default_chunk
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = list(rows[0][2])
    print(f"{'layout':<28} {'record s':>9} " + " ".join(f"{k:>27}" for k in keys))
    for label, rec, res in rows:
        print(f"{label:<28} {rec:>9.1f} " + " ".join(f"{res[k]:>27.2f}" for k in keys))


if __name__ == "__main__":
    main()
