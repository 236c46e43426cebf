"""`probe record --workers N` against the single-process recorder, on this machine.

Records the same prompts (a SmolLM2-135M run on WinoBias sentences by default: every hook
but the opt-in ones) three ways, each into a fresh run directory, and prints wall time,
tokens per second and the ratio to the single-process recorder:

  * ``single``     `probe.recorder.record` in this process (the model loaded once, untimed);
  * ``ray x1``     one Ray worker: what Ray itself costs (cluster start, the worker's own model
                   load, moving token rows to it and shard entries back), timed from the call;
  * ``ray x2``     two workers, one per core of this 2-core machine.

Torch threads: the workers use the driver's thread count (so the runs are bit-identical); the
single process and the driver run with ``--threads`` (default 1, so two workers use the two
cores and the single process one: the comparison the issue asks for). The runs are checked
equal before the figures are printed.

    python bench/workers.py [--model smollm2] [--prompts winobias-dev] [-n 96] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probe.recorder import record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", default="winobias-dev")
    p.add_argument("-n", type=int, default=96, help="prompts (the first n of the set)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from probe.prompts import load_prompts

    prompts = load_prompts(args.prompts)[: args.n]
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    runs, times = {}, {}
    try:
        for label, workers in (("single", None), ("ray x1", 1), ("ray x2", 2)):
            model = args.model
            if workers is None:  # the single process gets its model loaded before the clock starts
                import models

                model = models.load(args.model)
            start = time.perf_counter()
            runs[label] = record(model, prompts, root / label.replace(" ", ""), batch_size=args.batch_size,
                                 workers=workers, progress=False)
            times[label] = time.perf_counter() - start
            if workers is not None:
                import ray

                ray.shutdown()  # the next configuration starts its own local cluster, timed
        base = runs["single"]
        for label, run in runs.items():  # the same run, checked on a sample of hooks and prompts
            for name in base.hooks[:: max(1, len(base.hooks) // 12)]:
                for i in range(0, base.n_prompts, max(1, base.n_prompts // 8)):
                    assert np.array_equal(base.prompt_activation(name, i), run.prompt_activation(name, i)), (label, name)
        tokens = base.n_tokens
        size = sum(f.stat().st_size for f in (root / "single").rglob("*.h5")) / 2**30
        print(f"{args.model}, {len(prompts)} prompts ({tokens} tokens), {len(base.hooks)} hooks, {size:.2f} GiB per run, "
              f"batch {args.batch_size}, {args.threads} torch thread(s)")
        for label, seconds in times.items():
            print(f"  {label:<8} {seconds:7.1f} s  {tokens / seconds:8.1f} tokens/s  "
                  f"x{times['single'] / seconds:.2f} vs single")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
