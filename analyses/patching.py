"""Activation patching between clean and corrupted prompts of equal length.

Reports the normalised metric (Heimersheim & Nanda 2024, "How to use and interpret
activation patching"):  (patched - corrupt) / (clean - corrupt), so 1 means the patched
activation alone restores the clean behaviour and 0 means it does nothing.

- ``denoise`` (the default): run the corrupted input and patch in one clean activation
  (does this component suffice to restore the clean behaviour?);
- ``noise``: run the clean input and patch in one corrupted activation (is it necessary?).

For both directions ``normalized`` is the same affine map of the patched metric, the one
Heimersheim & Nanda use throughout (0 = the corrupted run's value, 1 = the clean run's):
denoising reads it as "how much of the clean behaviour this activation restores" (0 = none,
1 = all), noising as "how much of the clean behaviour survives losing it" (1 = no damage,
0 = as bad as the corrupted run). So ``1 - normalized`` is the damage a noising patch does.
The unnormalised ``patched`` value is in every row too.

Batched like the ablation sweep: one forward pass per layer runs one copy of the batch per
patched position (or head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import pandas as pd
import torch

from models import HookedTransformer
from probe.errors import InputError
from probe.hook_names import block_of

from .ablation import Metric, evaluate

Direction = Literal["denoise", "noise"]


def _setup(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric,
           direction: Direction, names: str, attention_mask: torch.Tensor | None):
    if clean.shape != corrupt.shape:
        raise InputError(f"clean and corrupted prompts must have the same token length; got {tuple(clean.shape)} "
                         f"and {tuple(corrupt.shape)}")
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be denoise or noise, got {direction!r}")
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names, attention_mask=attention_mask)
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=names, attention_mask=attention_mask)
        clean_value = evaluate(model, clean, metric, attention_mask=attention_mask)[0].mean().item()
        corrupt_value = evaluate(model, corrupt, metric, attention_mask=attention_mask)[0].mean().item()
    if abs(clean_value - corrupt_value) < 1e-6:
        raise InputError("the metric is the same on clean and corrupted prompts, so nothing can be normalised")
    source, target = (clean_cache, corrupt) if direction == "denoise" else (corrupt_cache, clean)
    return source, target, clean_value, corrupt_value


def _patch_each(model: HookedTransformer, target: torch.Tensor, hook_name: str, source: dict[int, torch.Tensor],
                units: dict[int, list[int]], place: Callable[[torch.Tensor, torch.Tensor, int], None], metric: Metric,
                key: str, clean_value: float, corrupt_value: float,
                attention_mask: torch.Tensor | None = None,
                resume: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """For every layer of ``units`` ({layer: [unit, ...]}), one forward pass over one copy of
    the target batch per unit, the copy of unit ``u`` patched by ``place(copy, source[layer], u)``
    at ``hook_name``; one row per (layer, unit) with the patched metric and its normalised
    value. ``resume``: the target's
    own activations ({"blocks.L.hook_resid_pre": ..., and what the metric reads}), given where
    the patch sits inside block L, so each pass starts at block L (earlier blocks do not see
    the patch) with the metric's earlier reads taken from it, as the ablation sweep does."""
    b = target.shape[0]
    rows = []
    for layer, chosen in sorted(units.items()):
        src = source[layer]

        def hook(x, hook, src=src, chosen=chosen):
            x = x.clone()
            for i, unit in enumerate(chosen):
                place(x[i * b:(i + 1) * b], src, unit)  # a view: writes into x
            return x

        start = {}
        if resume is not None:
            known = {name: resume[name] for name in getattr(metric, "reads", ()) if (block_of(name) or 0) < layer}
            start = {"resume": (layer, resume[f"blocks.{layer}.hook_resid_pre"]), "known": known}
        values = evaluate(model, target, metric, [(hook_name.format(layer=layer), hook)], attention_mask,
                          copies=len(chosen), **start)
        for unit, value in zip(chosen, values):
            patched = value.mean().item()
            rows.append({"layer": layer, key: unit, "patched": patched,
                         "normalized": (patched - corrupt_value) / (clean_value - corrupt_value)})
    return rows


def _head_units(model: HookedTransformer, heads: Iterable[tuple[int, int]] | None) -> dict[int, list[int]]:
    """{layer: [head, ...]} of every head, or of the (layer, head) pairs given (checked)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    units: dict[int, list[int]] = {}
    for pair in heads:
        layer, head = (int(v) for v in pair)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(f"head ({layer}, {head}) is not in the model ({n_layers} layers x {n_heads} heads)")
        if head not in units.setdefault(layer, []):
            units[layer].append(head)
    if not units:
        raise InputError("heads is empty; give at least one (layer, head) or None for every head")
    return {layer: sorted(hs) for layer, hs in units.items()}


@torch.no_grad()
def patch_residual(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric,
                   direction: Direction = "denoise", attention_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """Patch ``resid_pre`` of each [layer, position]; one row per cell. ``attention_mask``
    (shared by the pairs) lets pairs of one length ride in a batch padded to a longer one."""
    source, target, clean_value, corrupt_value = _setup(model, clean, corrupt, metric, direction,
                                                        "blocks.*.hook_resid_pre", attention_mask)

    def place(x, src, pos):  # x, src: [b, pos, m]
        x[:, pos] = src[:, pos]

    resid = {layer: source["resid_pre", layer] for layer in range(model.cfg.n_layers)}
    every_position = {layer: list(range(target.shape[1])) for layer in range(model.cfg.n_layers)}
    rows = _patch_each(model, target, "blocks.{layer}.hook_resid_pre", resid, every_position, place, metric,
                       "position", clean_value, corrupt_value, attention_mask)
    return pd.DataFrame(rows).assign(direction=direction, clean=clean_value, corrupt=corrupt_value)


@torch.no_grad()
def patch_heads(model: HookedTransformer, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric,
                direction: Direction = "denoise", attention_mask: torch.Tensor | None = None,
                heads: Iterable[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Patch each head's output z (all positions) per [layer, head]; one row per head, for
    every head or only the (layer, head) pairs of ``heads`` (rows in layer, then head order)."""
    units = _head_units(model, heads)
    source, target, clean_value, corrupt_value = _setup(model, clean, corrupt, metric, direction,
                                                        "blocks.*.attn.hook_z", attention_mask)

    def place(z, src, head):  # z, src: [b, pos, head, d_head]
        z[:, :, head] = src[:, :, head]

    zs = {layer: source["z", layer] for layer in range(model.cfg.n_layers)}
    # a head's output is patched inside its block: the target's residual stream before it is its own
    reads = [n for n in getattr(metric, "reads", ()) if block_of(n) is not None]
    with torch.no_grad():
        _, own = model.run_with_cache(target, names_filter=lambda n: n.endswith("hook_resid_pre") or n in reads,
                                      attention_mask=attention_mask)
    rows = _patch_each(model, target, "blocks.{layer}.attn.hook_z", zs, units, place, metric, "head",
                       clean_value, corrupt_value, attention_mask, resume=dict(own.items()))
    return pd.DataFrame(rows).assign(direction=direction, clean=clean_value, corrupt=corrupt_value)
