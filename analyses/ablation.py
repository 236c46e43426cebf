"""Head (and MLP) ablation through the hook API, and the per-head ablation sweep.

Methods (as the literature names them):
- ``zero``: the head's output z is set to 0;
- ``mean``: z is replaced by its mean over a reference set, per position;
- ``resample``: z is replaced by z of another example of the reference set (a fixed random
  pairing), which keeps it on-distribution (Chan et al. 2022, causal scrubbing).

A sweep ablates each head in turn and reports the change in a metric as a [layer, head]
table. It is batched: one forward pass per layer runs the batch once per head of that layer,
each copy with a different head ablated, so a full sweep costs n_layers passes (times
``n_heads`` in batch size), not n_layers * n_heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pandas as pd
import torch

from models import HookedTransformer, InputError

Method = Literal["zero", "mean", "resample"]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [b,p,v], tokens [b,p]) -> [b]


def next_token_loss(positions: slice | None = None) -> Metric:
    """Per-example mean next-token cross-entropy, optionally over a slice of the
    [p-1] prediction positions (e.g. only the repeated half of an induction sequence)."""

    def metric(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logp = logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
        return nll[:, positions].mean(-1) if positions is not None else nll.mean(-1)

    return metric


def logit_difference(answer: torch.Tensor, wrong: torch.Tensor, position: int = -1) -> Metric:
    """logit[answer] - logit[wrong] at ``position`` (per example token ids [b])."""

    def metric(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        last = logits[:, position].float()
        return last.gather(-1, answer[:, None])[:, 0] - last.gather(-1, wrong[:, None])[:, 0]

    return metric


@torch.no_grad()
def reference_z(model: HookedTransformer, reference: torch.Tensor) -> dict[int, torch.Tensor]:
    """z of every layer on the reference tokens: {layer: [n_ref, pos, head, d_head]}."""
    _, cache = model.run_with_cache(reference, names_filter="blocks.*.attn.hook_z")
    return {layer: cache["z", layer] for layer in range(model.cfg.n_layers)}


def replacement(method: Method, z: torch.Tensor, ref: torch.Tensor | None, seed: int = 0) -> torch.Tensor:
    """What an ablated head's z becomes: [b, pos, d_head] for one head."""
    if method == "zero":
        return torch.zeros_like(z)
    if ref is None:
        raise InputError(f"{method} ablation needs a reference set of examples (reference=...)")
    if ref.shape[1] != z.shape[1]:
        raise InputError(f"{method} ablation replaces per position: reference sequences have {ref.shape[1]} "
                         f"positions but the inputs have {z.shape[1]}; use inputs and references of equal length")
    if method == "mean":
        return ref.mean(0, keepdim=True).expand_as(z)
    if method == "resample":
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, ref.shape[0], (z.shape[0],), generator=g)
        return ref[pick]
    raise InputError(f"unknown ablation method {method!r}; use zero, mean or resample")


def ablate_heads_hooks(model: HookedTransformer, heads: list[tuple[int, int]], method: Method = "zero",
                       reference: torch.Tensor | None = None, seed: int = 0) -> list:
    """Forward hooks that ablate the given (layer, head) pairs; pass to run_with_hooks."""
    refs = reference_z(model, reference) if reference is not None and method != "zero" else {}
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in by_layer.items():
        def hook(z, hook, hs=hs, layer=layer):
            z = z.clone()
            for h in hs:
                ref = refs.get(layer)
                z[:, :, h] = replacement(method, z[:, :, h], ref[:, :, h] if ref is not None else None, seed)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks


def ablate_mlp_hooks(model: HookedTransformer, layers: list[int], method: Method = "zero",
                     reference: torch.Tensor | None = None, seed: int = 0) -> list:
    """Forward hooks that ablate the MLP output of the given layers."""
    if model.cfg.attn_only:
        raise InputError("this model has no MLP layers")
    refs = {}
    if method != "zero":
        if reference is None:
            raise InputError(f"{method} ablation needs a reference set of examples (reference=...)")
        _, cache = model.run_with_cache(reference, names_filter="blocks.*.hook_mlp_out")
        refs = {layer: cache["mlp_out", layer] for layer in layers}
    return [(f"blocks.{layer}.hook_mlp_out",
             lambda x, hook, layer=layer: replacement(method, x, refs.get(layer), seed)) for layer in layers]


@torch.no_grad()
def head_ablation_sweep(model: HookedTransformer, tokens: torch.Tensor, metric: Metric, method: Method = "zero",
                        reference: torch.Tensor | None = None, seed: int = 0, max_batch: int = 512) -> pd.DataFrame:
    """Effect on ``metric`` of ablating each head alone: one row per (layer, head) with the
    clean value, the ablated value and their difference (ablated - clean), averaged over
    the examples in ``tokens``."""
    cfg = model.cfg
    clean = metric(model(tokens), tokens).mean().item()
    refs = reference_z(model, reference) if method != "zero" and reference is not None else {}
    b = tokens.shape[0]
    heads_per_pass = max(1, max_batch // b)
    rows = []
    for layer in range(cfg.n_layers):
        for h0 in range(0, cfg.n_heads, heads_per_pass):
            heads = list(range(h0, min(cfg.n_heads, h0 + heads_per_pass)))
            batch = tokens.repeat(len(heads), 1)  # copy i ablates heads[i]

            def hook(z, hook, heads=heads, layer=layer):
                z = z.clone()
                for i, h in enumerate(heads):
                    part = z[i * b:(i + 1) * b, :, h]
                    ref = refs.get(layer)
                    z[i * b:(i + 1) * b, :, h] = replacement(method, part, ref[:, :, h] if ref is not None else None,
                                                             seed)
                return z

            logits = model.run_with_hooks(batch, [(f"blocks.{layer}.attn.hook_z", hook)])
            for i, h in enumerate(heads):
                # the metric sees one copy at a time, so per-example metrics (answer ids) line up
                ablated = metric(logits[i * b:(i + 1) * b], tokens).mean().item()
                rows.append({"layer": layer, "head": h, "method": method, "clean": clean, "ablated": ablated,
                             "effect": ablated - clean})
    return pd.DataFrame(rows)
