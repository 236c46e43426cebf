"""A run far larger than memory, and bounded memory everywhere on it (issue 18).

Records SmolLM2-135M with every hook (all but the opt-in ones) on real text, UD English-EWT
sentences (dev, then test), twice: a run of about --small-gb and one of at least --gb (default
50 GB, twice this machine's RAM). On each run it then times, each step in a fresh process so
its peak RSS is its own:

  * ``record``     `probe.record` in one process (GB written, tokens/s, peak RSS);
  * ``heads``      head metrics over every prompt of the run, saved beside it (what the
                   dashboard's grid shows);
  * ``probes``     a part-of-speech probe sweep over all layers, the word features read shard
                   by shard and streamed through the fit from a scratch file (``stream=True``:
                   `probe probes --task pos --stream`);
  * ``dashboard``  the dashboard's server on the run: --repeats random head switches and prompt
                   switches, through the real HTTP callback path (bench/dashboard.py's client),
                   p95 of the server time one click costs.

Bounded means each step's peak RSS is about the same on both runs while the data grows 50x.
Free disk is checked first (both runs, the probe rows' scratch file and a margin); the bench
says how much is missing and stops when there is not enough. The runs are deleted at the end
unless --keep.

    python bench/scale.py [--gb 50] [--small-gb 1] [--dir /tmp] [--threads 2] [--repeats 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "smollm2"
PROMPT_SETS = ("ud-ewt-dev", "ud-ewt-test")
BATCH = 8


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prompts_for_bench():
    """The sentences, the BATCH longest (by characters) first: both runs then hold the run's
    largest batch, which sets the recorder's peak (a batch's activations are buffered whole),
    so the two peaks differ only by what the run's size adds."""
    import probe

    prompts = [p for name in PROMPT_SETS for p in probe.load_prompts(name)]
    longest = set(sorted(range(len(prompts)), key=lambda i: -len(prompts[i].text))[:BATCH])
    return [prompts[i] for i in sorted(longest)] + [p for i, p in enumerate(prompts) if i not in longest]


# ------------------------------------------------------------------ the steps, each in its own process
def step_plan(targets: list[float]) -> dict:
    """How many prompts make each target size: exact bytes per prompt from the hooks' shapes
    (token hooks n x their width, attention hooks heads x n x n, float32)."""
    import numpy as np

    import models
    from probe.recorder import hook_shapes, select_hooks, tokenize_all

    model = models.load(MODEL)
    prompts = prompts_for_bench()
    hooks = select_hooks(model, None)
    rows, _ = tokenize_all(model, prompts, False)
    info = hook_shapes(model, hooks, rows[0])
    per_token = sum(int(np.prod(v["shape"])) for v in info.values() if v["kind"] == "token")
    per_pair = sum(v["shape"][0] for v in info.values() if v["kind"] == "attention")
    if max(len(r) for r in rows[:BATCH]) < max(len(r) for r in rows):
        raise RuntimeError("the longest prompt in tokens is not in the first batch; order by tokens instead")
    sizes = np.cumsum([4 * (len(r) * per_token + len(r) ** 2 * per_pair) for r in rows])
    tokens = np.cumsum([len(r) for r in rows])
    counts = [int(np.searchsorted(sizes, t * 1e9)) + 1 for t in targets]
    return {"counts": counts, "available_bytes": float(sizes[-1]), "hooks": len(hooks),
            "tokens": [int(tokens[min(c, len(rows)) - 1]) for c in counts],
            "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model}


def step_record(path: str, n: int, threads: int) -> dict:
    import torch

    import models
    import probe

    torch.set_num_threads(threads)
    model = models.load(MODEL)
    prompts = prompts_for_bench()[:n]
    loaded = peak_mib()
    t = time.perf_counter()
    run = probe.record(model, prompts, path, batch_size=BATCH, progress=False)
    seconds = time.perf_counter() - t
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {"seconds": seconds, "tokens": run.n_tokens, "prompts": run.n_prompts, "bytes": size,
            "shards": len(run.manifest["shards"]), "hooks": len(run.hooks), "loaded_mib": loaded,
            "peak_mib": peak_mib()}


def step_heads(path: str, threads: int) -> dict:
    import torch

    import probe
    from analyses.head_metrics import head_metrics
    from analyses.results import save_result

    torch.set_num_threads(threads)
    run = probe.open(path)
    opened = peak_mib()
    t = time.perf_counter()
    table = head_metrics(run)
    seconds = time.perf_counter() - t
    save_result(path, "head_metrics", table)
    return {"seconds": seconds, "rows": len(table), "opened_mib": opened, "peak_mib": peak_mib()}


def step_probes(path: str, threads: int) -> dict:
    import torch

    import probe
    from analyses.probe_studies import probe_study

    torch.set_num_threads(threads)
    run = probe.open(path)
    opened = peak_mib()
    t = time.perf_counter()
    study = probe_study(run, task="pos", stream=True)
    seconds = time.perf_counter() - t
    table = study.table
    best = table.loc[table["test_acc"].idxmax()]
    return {"seconds": seconds, "rows": study.n_rows, "layers": len(table), "streamed_bytes": study.streamed_bytes,
            "best_layer": int(best["layer"]), "best_accuracy": float(best["test_acc"]),
            "opened_mib": opened, "peak_mib": peak_mib()}


def step_dashboard(path: str, repeats: int, seed: int) -> dict:
    import random
    import statistics

    import torch

    import probe
    from bench.dashboard import Browser, interaction
    from dashboard.app import create_app

    torch.set_num_threads(1)
    run = probe.open(path)
    L, H = run.config["n_layers"], run.config["n_heads"]
    app = create_app([Path(path)])
    browser = Browser(app)
    rng = random.Random(seed)
    state = {"url.search": "?view=head", "state.data": None, "generation.data": 0, "prompt-search.value": None}
    state["state.data"] = browser.call(browser.dep("state.data"), state, ["url.search"])["state"]["data"]
    state = interaction(browser, state, "next.n_clicks", 1)[2]  # warm imports and the first figures
    out = {}
    for kind in ("head", "prompt"):
        totals = []
        for _ in range(repeats):
            if kind == "head":
                click = {"points": [{"x": rng.randrange(H), "y": rng.randrange(L)}]}
                times, _, state = interaction(browser, state, "grid.clickData", click)
            else:
                times, _, state = interaction(browser, state, "prompt.value", rng.randrange(run.n_prompts))
            totals.append(sum(times.values()))
        out[f"{kind}_p50_ms"] = statistics.median(totals)
        out[f"{kind}_p95_ms"] = statistics.quantiles(totals, n=20)[18]
    out["peak_mib"] = peak_mib()
    return out


STEPS = {"plan": step_plan, "record": step_record, "heads": step_heads, "probes": step_probes,
         "dashboard": step_dashboard}


def in_child(step: str, *args) -> dict:
    """Run one step in a fresh interpreter; its result is the last line it prints."""
    r = subprocess.run([sys.executable, str(Path(__file__)), "--step", step, json.dumps(args)],
                       capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        sys.exit(f"step {step} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=50.0, help="size of the large run, GB (1e9 bytes; default 50)")
    ap.add_argument("--small-gb", type=float, default=1.0, help="size of the comparison run (default 1)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the runs go (default /tmp)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the recorder and the analyses")
    ap.add_argument("--repeats", type=int, default=100, help="dashboard switches of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the runs (their paths are printed)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step:  # a child: one step, its result as the last line
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/analyses.py would shadow
        sys.path.insert(0, str(REPO))
        print(json.dumps(STEPS[a.step](*json.loads(a.args))))
        return
    if not 0 < a.small_gb < a.gb:
        sys.exit("--small-gb must be positive and smaller than --gb")
    if not a.dir.is_dir():
        sys.exit(f"--dir {a.dir} is not a directory")

    plan = in_child("plan", [a.small_gb, a.gb])
    if plan["available_bytes"] < a.gb * 1e9:
        sys.exit(f"the bench's {', '.join(PROMPT_SETS)} sentences make {plan['available_bytes'] / 1e9:.1f} GB of "
                 f"{MODEL} activations, less than --gb {a.gb}; give a smaller --gb")
    # both runs, the probe's two scratch files (a row of every layer per word; the training rows
    # rotated once more) and 5% room
    scratch = 2 * 4 * plan["tokens"][1] * plan["n_layers"] * plan["d_model"]
    need = 1.05 * (a.small_gb + a.gb) * 1e9 + scratch
    free = shutil.disk_usage(a.dir).free
    if free < need:
        sys.exit(f"not enough free disk at {a.dir}: {free / 1e9:.1f} GB free, this bench needs {need / 1e9:.1f} GB "
                 f"(two runs of {a.small_gb:g} and {a.gb:g} GB and the probe rows' scratch file); free space, give "
                 f"--dir on a larger disk, or a smaller --gb")
    print(f"{free / 1e9:.0f} GB free at {a.dir}, {need / 1e9:.0f} GB needed; {MODEL}, {plan['hooks']} hooks, "
          f"float32, batch {BATCH}, {a.threads} torch thread(s); UD English-EWT sentences", flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=a.dir))
    results = {}
    try:
        for label, n in zip(("small", "large"), plan["counts"]):
            path = str(root / label)
            print(f"\n{label} run: {n} prompts -> {path}", flush=True)
            rec = in_child("record", path, n, a.threads)
            print(f"  record     {rec['bytes'] / 1e9:7.2f} GB, {rec['tokens']} tokens, {rec['shards']} shards, "
                  f"{rec['seconds']:7.0f} s, {rec['tokens'] / rec['seconds']:6.0f} tokens/s, "
                  f"{rec['bytes'] / rec['seconds'] / 1e6:5.0f} MB/s, peak RSS {rec['peak_mib']:6.0f} MiB "
                  f"(after the model load {rec['loaded_mib']:.0f})", flush=True)
            heads = in_child("heads", path, a.threads)
            print(f"  heads      {heads['seconds']:7.0f} s, peak RSS {heads['peak_mib']:6.0f} MiB "
                  f"(run opened {heads['opened_mib']:.0f})", flush=True)
            probes = in_child("probes", path, a.threads)
            print(f"  probes     {probes['seconds']:7.0f} s, {probes['rows']} words x {probes['layers']} layers "
                  f"({(probes['streamed_bytes'] or 0) / 1e9:.2f} GB of rows streamed), best layer "
                  f"{probes['best_layer']} at {probes['best_accuracy']:.3f}, peak RSS {probes['peak_mib']:6.0f} MiB",
                  flush=True)
            dash = in_child("dashboard", path, a.repeats, a.seed)
            print(f"  dashboard  head switch p50 {dash['head_p50_ms']:.1f} ms p95 {dash['head_p95_ms']:.1f} ms, "
                  f"prompt switch p50 {dash['prompt_p50_ms']:.1f} ms p95 {dash['prompt_p95_ms']:.1f} ms, "
                  f"peak RSS {dash['peak_mib']:6.0f} MiB", flush=True)
            results[label] = {"record": rec, "heads": heads, "probes": probes, "dashboard": dash}
        s, g = results["small"], results["large"]
        print("\n| | small run | large run | large / small |\n|---|---|---|---|")
        rows = [("GB written", lambda r: r["record"]["bytes"] / 1e9, "{:.2f}"),
                ("tokens", lambda r: r["record"]["tokens"], "{:,}"),
                ("record, tokens/s", lambda r: r["record"]["tokens"] / r["record"]["seconds"], "{:.0f}"),
                ("record, peak RSS MiB", lambda r: r["record"]["peak_mib"], "{:.0f}"),
                ("head metrics, s", lambda r: r["heads"]["seconds"], "{:.0f}"),
                ("head metrics, peak RSS MiB", lambda r: r["heads"]["peak_mib"], "{:.0f}"),
                ("POS probe sweep, s", lambda r: r["probes"]["seconds"], "{:.0f}"),
                ("POS probe sweep, peak RSS MiB", lambda r: r["probes"]["peak_mib"], "{:.0f}"),
                ("dashboard, peak RSS MiB", lambda r: r["dashboard"]["peak_mib"], "{:.0f}"),
                ("dashboard head switch p95, ms", lambda r: r["dashboard"]["head_p95_ms"], "{:.1f}"),
                ("dashboard prompt switch p95, ms", lambda r: r["dashboard"]["prompt_p95_ms"], "{:.1f}")]
        for name, get, fmt in rows:
            print(f"| {name} | {fmt.format(get(s))} | {fmt.format(get(g))} | {get(g) / get(s):.2f} |")
        print(json.dumps(results), file=sys.stderr)  # every figure, for the record
    finally:
        if a.keep:
            print(f"runs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
