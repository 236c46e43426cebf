"""Peak memory of `probe record` as the prompt count grows: the large-scale check behind
"memory stays bounded while recording any number of prompts".

Records MiniLM with every hook on the first N WinoBias prompts, for each N, each in its own
process, and prints the peak RSS and the bytes written. Bounded means the peak barely moves
while the data written grows with N.

    python bench/record_memory.py [--counts 100 2000] [--shard-mb 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
import models, probe
n, out, shard_mb = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
model = models.load("minilm")
prompts = probe.load_prompts("winobias")[:n]
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
run = probe.record(model, prompts, out, batch_size=16, shard_mb=shard_mb, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": run.n_tokens, "loaded_kib": loaded,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 2000])
    ap.add_argument("--shard-mb", type=float, default=64.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="record_memory_"))
    print(f"MiniLM, every hook, float32, batch 16, --shard-mb {args.shard_mb}")
    print(f"{'prompts':>8} {'tokens':>8} {'GB written':>11} {'seconds':>8} {'RSS after load MiB':>19} "
          f"{'peak RSS MiB':>13} {'growth MiB':>11}")
    try:
        for n in args.counts:
            out = tmp / f"run{n}"
            r = subprocess.run([sys.executable, "-c", CHILD, str(n), str(out), str(args.shard_mb)],
                               capture_output=True, text=True, cwd=REPO, env=None)
            if r.returncode:
                sys.exit(r.stderr)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            print(f"{n:>8} {res['tokens']:>8} {size / 1e9:>11.2f} {res['seconds']:>8.1f} "
                  f"{res['loaded_kib'] / 1024:>19.0f} {res['peak_kib'] / 1024:>13.0f} "
                  f"{(res['peak_kib'] - res['loaded_kib']) / 1024:>11.0f}")
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
