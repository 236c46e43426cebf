"""`record`: run a model over a prompt set and write every requested activation to a run.

Prompts are batched in order (batch k holds prompts k*B .. k*B+B-1), right-padded, and
only real tokens are written. Shards close on batch boundaries, so a resumed run forms
exactly the batches an uninterrupted run would and its contents are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .errors import InputError
from .hook_names import default_hook_names, is_attention_hook, name_matcher, sequence_of
from .store import (
    RunWriter,
    StoreError,
    check_run_target,
    compression_options,
    read_manifest,
    run_state,
    write_failure,
)

if TYPE_CHECKING:
    from models import HookedTransformer

    from .reader import Run


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the OS. Recording
    allocates and frees the same large buffers batch after batch; on VMs whose freed pages
    go back to the host, every fresh page then costs a slow first touch (measured here:
    ~390 MB/s, which made recording 1.9x the forward+write floor on a quiet machine)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 512 * 2**20)  # serve big buffers from the reusable heap
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)  # and keep up to 1 GiB of freed heap for reuse
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass


def weights_digest(model: HookedTransformer) -> str:
    """sha256 over every weight (name, dtype, shape, bytes) in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().cpu().contiguous()
        h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}".encode())
        h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes view works for bfloat16 too
    return h.hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    if tokenizer is None:
        return {"class": None}
    ident: dict[str, Any] = {"class": type(tokenizer).__name__,
                             "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
                             "vocab_size": len(tokenizer)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ident["sha256"] = hashlib.sha256(backend.to_str().encode()).hexdigest()
    return ident


def select_hooks(model: HookedTransformer, names: Sequence[str] | None) -> list[str]:
    """Hook names to record: all but ``hook_result`` by default, else those matching the globs."""
    if not names:
        return default_hook_names(model.hook_dict)
    chosen = []
    for pattern in names:
        hits = [n for n in model.hook_dict if name_matcher(pattern)(n)]
        if not hits:
            layer0 = [n for n in model.hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
            raise StoreError(f"--names {pattern!r} matches no hook point; hook names look like {layer0} "
                             "('blocks.N.' repeats for every layer; globs such as 'blocks.*.attn.hook_pattern' work)")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in model.hook_dict if n in chosen]  # model order


def record(model: HookedTransformer | str, prompts: Any, path: str | os.PathLike, names: Sequence[str] | None = None,
           batch_size: int = 16, dtype: str = "float32", compression: str = "none", resume: bool = False,
           overwrite: bool = False, truncate: bool = False, shard_mb: float = 64.0,
           progress: bool = True, model_dtype: str = "float32", workers: int | None = None,
           ray_address: str | None = None, _on_unit: Any = None) -> Run:
    """Record activations of ``model`` on ``prompts`` into the run directory ``path``.

    ``model``: a loaded model, or a name or checkpoint directory that `models.load` takes (in
    ``model_dtype``), loaded only once the output and the prompts have been checked.
    ``prompts``: a list of strings or `Prompt` objects, or anything `load_prompts` takes
    (a .txt / .jsonl path or a bundled set name). Returns the opened run.

    ``workers``: record with that many Ray actors, each loading ``model`` (a name or directory)
    itself, on a local cluster or the one at ``ray_address`` (`probe.distributed`); the run is
    the same as a single-process one. ``_on_unit`` is the tests' hook into it."""
    from .prompts import load_prompts, prompt_set_fingerprint
    from .reader import open_run

    # Every argument is checked before anything is loaded or any file is touched.
    check_run_target(path, resume, overwrite)
    if dtype not in ("float16", "float32"):
        raise StoreError(f"dtype must be float16 or float32, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise StoreError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(shard_mb, bool) or not isinstance(shard_mb, (int, float)) or not 0 < shard_mb < float("inf"):
        raise StoreError(f"--shard-mb must be a positive number of MiB, got {shard_mb!r}; it bounds the memory "
                         "buffered before a shard is published")
    compression_options(compression)  # refuses an unknown compression
    model_name = model if isinstance(model, str) else None
    if workers is not None:
        from .distributed import check_workers

        check_workers(workers)
        if model_name is None:
            raise InputError("with workers, give the model by name or checkpoint directory: each worker loads its own copy")
    prompts = load_prompts(str(prompts) if isinstance(prompts, Path) else prompts)  # every item checked
    path = Path(path)
    if isinstance(model, str):  # the one place probe loads a model: by name, for `probe record`
        import models

        model = models.load(model, dtype=model_dtype)

    hooks = select_hooks(model, names)
    token_rows, truncated = tokenize_all(model, prompts, truncate)
    n_tokens = sum(len(r) for r in token_rows)
    # Encoder-decoder models: each prompt's "target" label is the decoder's input (the reference
    # translation); the run holds both sequences (docs/cache-format.md, "Encoder-decoder runs").
    target_rows = tokenize_targets(model, prompts, truncate) if is_encoder_decoder(model) else None
    if target_rows is not None:
        hooks = [h for h in hooks if not h.endswith("hook_position_bias")]  # [1, head, q, k]: not per prompt
    hook_info = hook_shapes(model, hooks, token_rows[0], target_rows[0] if target_rows else None)
    settings = {
        "model": {"name": model.cfg.model_name, "family": model.cfg.family, "config": model.cfg.to_dict(),
                  "weights_sha256": weights_digest(model), "tokenizer": tokenizer_identity(model.tokenizer)},
        "hooks": hook_info, "dtype": dtype, "compression": compression, "batch_size": batch_size,
        "shard_mb": shard_mb, "prompts_sha256": prompt_set_fingerprint(prompts), "n_prompts": len(prompts),
        "n_tokens": n_tokens, "truncated_prompts": truncated,
    }
    if target_rows is not None:
        settings["n_target_tokens"] = sum(len(r) for r in target_rows)
    pool = None
    if workers is not None:  # reach the cluster and load the workers' models before the run directory is touched
        from .distributed import WorkerPool, connect

        worker_settings = {"batch_size": batch_size, "hooks": hook_info, "hook_names": hooks, "dtype": dtype,
                           "compression": compression, "budget": shard_mb * 2**20}
        pool = WorkerPool(connect(ray_address, workers), model_name, model_dtype,
                          settings["model"]["weights_sha256"], workers, worker_settings)
    try:
        # a directory killed before its first manifest holds nothing published: resume starts it anew
        if resume and path.exists() and run_state(path) != "unstarted":
            writer = RunWriter.resume(path, settings)
            if writer.manifest["complete"]:
                writer.close()
                if pool is not None:
                    pool.close()
                print(f"{path} is already complete", file=sys.stderr)
                return open_run(path)
        else:
            labels = sorted({k for p in prompts for k in p.labels})
            manifest = {**settings, "package_version": __version__, "label_fields": labels}
            jsonl = "".join(json.dumps({"text": p.text, **p.labels}, ensure_ascii=False) + "\n" for p in prompts)
            writer = RunWriter.create(path, manifest, jsonl, overwrite=overwrite or resume)
    except BaseException as e:
        if pool is not None:
            pool.close()
        if isinstance(e, OSError):  # a full disk, a quota, permissions: before this call published anything
            raise write_failure(path, e, published_prompts(path)) from None
        raise

    keep_freed_memory()
    start = writer.next_prompt
    if start % batch_size and start != len(prompts):
        writer.close()
        if pool is not None:
            pool.close()
        raise StoreError(f"{path}: published prompts ({start}) do not end on a batch boundary; cannot resume")
    from .progress import Progress

    bar = Progress(len(prompts), n_tokens, f"recording {path.name}", done_prompts=start,
                   done_tokens=sum(len(r) for r in token_rows[:start])) if progress else None
    budget = shard_mb * 2**20
    shard = None
    try:
        if pool is not None:
            from .distributed import record_on_ray

            record_on_ray(pool, writer, prompts, token_rows, target_rows, batch_size, bar, _on_unit)
        for b0 in range(writer.next_prompt, len(prompts), batch_size):
            if shard is None:
                shard = writer.open_shard(hook_info, dtype, compression)
            n_batch_tokens = add_batch(shard, model, prompts, token_rows, target_rows, b0, batch_size, hooks, dtype)
            if shard.nbytes >= budget:
                writer.publish(shard)
                shard = None
            if bar:
                bar.advance(min(batch_size, len(prompts) - b0), n_batch_tokens)
        if shard is not None:
            writer.publish(shard)
            shard = None
        writer.finish()
    except OSError as e:  # a full disk, a quota, an I/O error: one line and exit 2, not a traceback
        if shard is not None:
            shard.discard()
        # What is published is what run.json on disk lists (the in-memory manifest may already
        # name a shard whose manifest write just failed).
        raise write_failure(path, e, published_prompts(path)) from None
    except BaseException:
        if shard is not None:
            shard.discard()
        raise
    finally:
        writer.close()  # one writer per run: the next may start (also after a failure)
        if bar:
            bar.close()
    return open_run(path)


def add_batch(shard: Any, model: Any, prompts: list, token_rows: list[list[int]], target_rows: list[list[int]] | None,
              b0: int, batch_size: int, hooks: list[str], dtype: str) -> int:
    """Run prompts ``b0 .. b0 + batch_size`` through the model and add them to ``shard`` (what
    every recorder does per batch, the single process and each Ray worker alike); returns the
    batch's token count."""
    import torch

    rows = token_rows[b0:b0 + batch_size]
    targets = target_rows[b0:b0 + batch_size] if target_rows is not None else None
    acts = run_batch(model, rows, hooks, dtype, torch, targets)
    ids = np.concatenate([np.asarray(r) for r in rows])
    strs = [s for r in rows for s in model.to_str_tokens(r)]
    spans = np.concatenate([char_spans(model, prompts[i].text, len(token_rows[i])) for i in range(b0, b0 + len(rows))])
    target = None
    if targets is not None:
        target = ([len(r) for r in targets], np.concatenate([np.asarray(r) for r in targets]),
                  [s for r in targets for s in model.to_str_tokens(r)])
    shard.add([len(r) for r in rows], model.cfg.n_heads, ids, strs, acts, spans, target)
    return int(ids.size)


def published_prompts(path: Path) -> int:
    """How many prompts the run's manifest on disk lists as published (0 if it has none)."""
    try:
        return sum(s["n_prompts"] for s in read_manifest(path)["shards"])
    except (OSError, StoreError):
        return 0


def char_spans(model: HookedTransformer, text: str, n_tokens: int) -> np.ndarray:
    """[n_tokens, 2] character offsets of each token in the prompt text, (-1, -1) for
    special tokens (what lets analyses map labelled spans, e.g. a pronoun, to tokens)."""
    out = np.full((n_tokens, 2), -1, np.int32)
    tok = model.tokenizer
    if tok is None or not getattr(tok, "is_fast", False):
        return out
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    shift = n_tokens - len(ids) if n_tokens > len(ids) else 0  # a BOS the model prepended itself
    special = set(tok.all_special_ids)
    for i, (t, (a, b)) in enumerate(zip(ids, offsets)):
        if i + shift < n_tokens and t not in special and b > a:
            out[i + shift] = (a, b)
    return out


def tokenize_all(model: HookedTransformer, prompts: list, truncate: bool) -> tuple[list[list[int]], list[int]]:
    """Token ids of every prompt, checked up front so a bad prompt fails before any work."""
    from .errors import InputError

    rows, truncated = [], []
    for i, p in enumerate(prompts):
        try:
            tok = model.tokenize(p.text, truncate=truncate)
        except InputError as e:
            raise StoreError(f"prompt {i} ({p.text[:40]!r}...): {e}") from None
        rows.append(tok.ids[0].tolist())
        if tok.truncated:
            truncated.append(i)
    return rows, truncated


def is_encoder_decoder(model: Any) -> bool:
    return bool(getattr(model.cfg, "encoder_decoder", False))


def tokenize_targets(model: Any, prompts: list, truncate: bool) -> list[list[int]]:
    """The decoder's input ids of every prompt's ``target`` label (from the decoder start
    token), checked up front like the sources."""
    from .errors import InputError

    rows = []
    for i, p in enumerate(prompts):
        target = p.labels.get("target")
        if not isinstance(target, str) or not target.strip():
            raise StoreError(f"prompt {i} ({p.text[:40]!r}) has no 'target' text; an encoder-decoder model records "
                             "a source and a target per prompt: give each JSONL line a \"target\" field")
        try:
            rows.append(model.tokenize(target, side="target", truncate=truncate).ids[0].tolist())
        except InputError as e:
            raise StoreError(f"prompt {i}'s target ({target[:40]!r}...): {e}") from None
    return rows


def hook_shapes(model: HookedTransformer, hooks: list[str], row: list[int],
                target_row: list[int] | None = None) -> dict[str, dict]:
    """Per-token shape of each hook (attention hooks are per prompt [head, n, n]); for
    encoder-decoder models also the sequence its positions run over."""
    import torch

    extra = {} if target_row is None else {"decoder_input": torch.tensor([target_row])}
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([row]), names_filter=hooks, **extra)
    info = {}
    for name in hooks:
        if is_attention_hook(name):
            info[name] = {"kind": "attention", "shape": [model.cfg.n_heads]}
        else:
            info[name] = {"kind": "token", "shape": list(cache[name].shape[2:])}
        if target_row is not None:
            info[name]["sequence"] = sequence_of(name)
    return info


def run_batch(model: HookedTransformer, rows: list[list[int]], hooks: list[str], dtype: str, torch,
              target_rows: list[list[int]] | None = None) -> dict:
    """One forward pass; returns each hook's activations without padding, as numpy in
    ``dtype``: [tokens, ...] for per-token hooks, flat [head, q, k] blocks for attention
    (encoder-decoder models: each hook over its own sequence, cross-attention target x source)."""
    from models.tokens import pad

    batch = pad(rows, 0, "right")
    sides = {"source": (batch, [len(r) for r in rows])}
    if target_rows is not None:
        sides["target"] = (pad(target_rows, 0, "right"), [len(r) for r in target_rows])
    masks = {side: b.attention_mask.bool().to(model.device) for side, (b, _) in sides.items()}
    tdtype = getattr(torch, dtype)
    out: dict[str, np.ndarray] = {}

    def save(x, hook):
        sequence = sequence_of(hook.name) if target_rows is not None else "source"
        if is_attention_hook(hook.name):
            queries = sides["source" if sequence == "source" else "target"][1]
            keys = sides["target" if sequence == "target" else "source"][1]
            flat = torch.cat([x[i, :, :q, :k].reshape(-1) for i, (q, k) in enumerate(zip(queries, keys))])
        else:
            flat = x[masks[sequence]]
        out[hook.name] = flat.detach().to(device="cpu", dtype=tdtype).numpy()

    with torch.no_grad(), model.hooks([(n, save) for n in hooks]):
        if target_rows is None:
            model(batch.ids.to(model.device), attention_mask=batch.attention_mask.to(model.device))
        else:
            target = sides["target"][0]
            model(batch.ids.to(model.device), target.ids.to(model.device), batch.attention_mask.to(model.device),
                  target.attention_mask.to(model.device), return_type=None)
    return out
