"""Train a toy model on a synthetic task (models/tasks/) and write a probe checkpoint.

Deterministic for a given seed on CPU: the weights are initialised from
``torch.manual_seed(seed)`` and the data come from a separate generator seeded the same way.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probe.errors import InputError, StoreError
from probe.paths import output_path_problem

from .hooked_transformer import HookedTransformer
from .loading import build, save
from .tasks import SPECIALS, get_task


def build_tokenizer(vocab: list[str], append: str | None = None):
    """A word-level Hugging Face tokenizer over ``vocab`` (specials first): splits on
    whitespace and punctuation, prepends nothing (the model prepends <bos>); with ``append``
    (the translator's <eos>) that token ends every text and is the tokenizer's EOS."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    extra = {}
    if append is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"$A {append}",
                                                           special_tokens=[(append, vocab.index(append))])
        extra["eos_token"] = append
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   **extra)


def init_weights(model: HookedTransformer) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norm scales."""
    for name, p in model.named_parameters():
        if name.endswith((".w",)):
            torch.nn.init.ones_(p)
        elif name.endswith((".b", ".bias")):
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.normal_(p, std=0.02)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def check_output(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to write a checkpoint where no directory can be (a file there or above), or into
    a non-empty directory unless told to replace it."""
    path = Path(out_dir)
    check_checkpoint_path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise StoreError(f"{path} already exists and is not empty; pass --overwrite to replace its checkpoint")


def check_checkpoint_path(out_dir: str | os.PathLike) -> None:
    """Refuse, before any training, a checkpoint directory that cannot be made."""
    if problem := output_path_problem(out_dir, folder=True):
        raise StoreError(f"cannot write the checkpoint: {problem}")


def check_hyperparameters(hp: dict[str, Any]) -> None:
    """Refuse what cannot train a model, before the first step: 0 steps would save an untrained
    checkpoint, a batch of 0 has no loss, and AdamW only fails on a NaN learning rate (an
    infinite or zero one would train to garbage or not at all)."""
    for name in ("steps", "batch_size"):
        value = hp[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    lr = hp["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number above 0, not {lr!r}")


def default_steps(task: str) -> int:
    """The optimisation steps a task trains for unless told otherwise."""
    return get_task(task).training_defaults["steps"]


def train(task: str, out_dir: str | os.PathLike, steps: int | None = None, seed: int = 0,
          batch_size: int | None = None, lr: float | None = None, command: str | None = None,
          on_step: Callable[[int, float], None] | None = None, log_every: int = 25) -> Path:
    """Train ``task`` from scratch and save a checkpoint directory; returns its path."""
    mod = get_task(task)
    hp = {**mod.training_defaults}
    hp.update({k: v for k, v in {"steps": steps, "batch_size": batch_size, "lr": lr}.items() if v is not None})
    check_hyperparameters(hp)
    check_checkpoint_path(out_dir)
    vocab = mod.vocabulary()
    assert vocab[: len(SPECIALS)] == SPECIALS
    # One thread: these models are tiny (more threads only add synchronisation), and it
    # keeps the floating-point reduction order, hence the result, fixed for a seed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(mod, task, out_dir, hp, vocab, seed, command, on_step, log_every)
    finally:
        torch.set_num_threads(threads)


def _train(mod, task, out_dir, hp, vocab, seed, command, on_step, log_every) -> Path:
    torch.manual_seed(seed)
    model = build(mod.model_config(len(vocab)), build_tokenizer(vocab, getattr(mod, "APPEND_EOS", None)))
    init_weights(model)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=(0.9, 0.98))
    data = torch.Generator().manual_seed(seed)
    log: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(hp["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, hp["steps"], hp["lr"], hp["warmup"])
        batch = mod.sample_batch(data, hp["batch_size"])
        if hasattr(mod, "training_loss"):
            loss = mod.training_loss(model, batch)
        else:  # a decoder-only language model: next-token loss where loss_mask says
            ids, attention_mask, loss_mask = batch
            logits = model(ids, attention_mask=attention_mask)
            loss = F.cross_entropy(logits[:, :-1][loss_mask], ids[:, 1:][loss_mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == hp["steps"] - 1:
            log.append((step, loss.item()))
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    metrics = mod.evaluate(model)
    out = save(model, out_dir)
    record = {"task": task, "seed": seed, "hyperparameters": hp, "command": command,
              "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1),
              "final_metrics": metrics, "loss_curve": {"step": [s for s, _ in log], "loss": [v for _, v in log]}}
    (out / "training_log.json").write_text(json.dumps(record, indent=1))
    (out / "loss_curve.svg").write_text(loss_curve_svg(log, f"{task}: training loss (seed {seed})"))
    return out


def loss_curve_svg(log: list[tuple[int, float]], title: str, width: int = 480, height: int = 260) -> str:
    """A small self-contained SVG line chart of the loss (no plotting dependency)."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 28, 32
    steps = [s for s, _ in log] or [0]
    losses = [v for _, v in log] or [0.0]
    x0, x1 = min(steps), max(steps) or 1
    y1 = max(losses) * 1.05 or 1.0
    def x(s: float) -> float:
        return pad_l + (s - x0) / max(x1 - x0, 1) * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - v / y1) * (height - pad_t - pad_b)

    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in log)
    ticks = "".join(
        f'<line x1="{pad_l - 4}" x2="{width - pad_r}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>'
        f'<text x="{pad_l - 6}" y="{y(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.2g}</text>'
        for t in [y1 * k / 4 for k in range(5)])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{ticks}'
            f'<text x="{width / 2}" y="16" font-size="12" text-anchor="middle">{title}</text>'
            f'<text x="{width / 2}" y="{height - 6}" font-size="10" text-anchor="middle">step (0..{x1})</text>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/></svg>')


def describe(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "training_log.json").read_text())
