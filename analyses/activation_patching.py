"""TransformerLens's activation-patching sweeps (``transformer_lens.patching``), under its names.

A notebook written for TransformerLens ports by changing one import::

    from analyses import activation_patching as patching

Each sweep runs the corrupted tokens once per index (a layer, a position, a head, ...) with one
clean activation patched in, and stores ``patching_metric(logits)`` at that index: the result has
one axis per index axis, in the sweep's axis order (``[n_layers, pos]`` for the residual stream,
``[n_layers, pos, n_heads]`` for heads by position, ``[n_layers, n_heads, dest_pos]`` for the
attention pattern by position ...), exactly as TransformerLens's. With ``index_df`` (one row per
index) the result is flat, one value per row, in the rows' order.

Unlike `analyses.patching` (batched, normalised, the project's own tables), this is one forward
pass per index and returns raw metric values, as TransformerLens does; it reads only
``model.run_with_hooks``, ``model.cfg`` and a clean ``ActivationCache``.

Grouped-query models (Llama-style with ``n_kv_heads < n_heads``): ``hook_k``/``hook_v`` have
``n_kv_heads`` heads, so the key and value sweeps iterate over those heads (their head axis is
``n_kv_heads`` long), as TransformerLens's do; the ``*_every`` helpers zero-pad them to ``n_heads``.

TransformerLens 4.3's keyword extras (``reduce``, ``baseline``, metric mappings and its
``PatchingResult``) are not implemented here: a metric returns a scalar.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from models import HookedTransformer, act_name
from probe.errors import InputError

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, d_vocab] -> scalar
PatchSetter = Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]
AxisName = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> pd.DataFrame:
    """Every combination of ``range(n)`` for each column, the last column varying fastest."""
    rows = list(itertools.product(*(range(n) for n in column_max_ranges)))
    return pd.DataFrame(rows, columns=list(column_names))


# ------------------------------------------------------------------ the generic sweep
def _require_eval(model: torch.nn.Module) -> None:
    """Dropout in training mode would make every patched run noisy; TransformerLens refuses too."""
    training = [name or "<root>" for name, module in model.named_modules() if module.training]
    if training:
        raise InputError(f"activation patching needs the model in eval mode (training: {', '.join(training[:3])}); "
                         "call model.eval() first")


def _n_heads_of(model: HookedTransformer, activation_name: str) -> int:
    """How many heads the patched activation has: hook_k/hook_v of a grouped-query model have
    n_kv_heads, every other head activation n_heads."""
    return model.cfg.n_kv_heads if activation_name in ("k", "v") else model.cfg.n_heads


def _axis_ranges(model: HookedTransformer, corrupted_tokens: torch.Tensor, activation_name: str,
                 index_axis_names: Sequence[str]) -> list[int]:
    """The length of each swept axis: layers from the config, positions from the tokens."""
    n_pos = int(corrupted_tokens.shape[-1])
    ranges = {"layer": model.cfg.n_layers, "pos": n_pos, "dest_pos": n_pos, "src_pos": n_pos}
    if {"head", "head_index"} & set(index_axis_names):
        ranges["head"] = ranges["head_index"] = _n_heads_of(model, activation_name)
    unknown = [a for a in index_axis_names if a not in ranges]
    if unknown:
        raise InputError(f"unknown index axis {unknown[0]!r}; axes are layer, pos, head_index, head, src_pos, dest_pos")
    return [ranges[a] for a in index_axis_names]


def _patching_hook(patch_setter: PatchSetter, index: list[int], clean_activation: torch.Tensor):
    def hook(corrupted_activation: torch.Tensor, hook: Any) -> torch.Tensor:
        # Writing in place into a tensor autograd still needs would break backward; a copy is safe.
        if corrupted_activation.requires_grad:
            corrupted_activation = corrupted_activation.clone()
        return patch_setter(corrupted_activation, index, clean_activation)

    return hook


def generic_activation_patch(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,  # [batch, pos]
    clean_cache: Any,
    patching_metric: Metric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisName] | None = None,
    index_df: pd.DataFrame | None = None,
    return_index_df: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, pd.DataFrame]:
    """Patch each index of ``activation_name`` (e.g. "resid_pre", "z", "pattern") from the clean
    run into the corrupted run and record ``patching_metric`` of the patched logits.

    The indices come from ``index_axis_names`` (every combination; the result has one axis per
    name) or from ``index_df`` (one row per index; the result is flat, one value per row). The
    first index is always the layer: it picks the hook, ``act_name(activation_name, layer)``.
    ``patch_setter(corrupted_activation, index, clean_activation)`` writes the clean part.
    With ``return_index_df`` the index table comes back too."""
    _require_eval(model)
    if index_df is None:
        if index_axis_names is None:
            raise InputError("give index_axis_names or index_df")
        shape = _axis_ranges(model, corrupted_tokens, activation_name, index_axis_names)
        index_df = make_df_from_ranges(shape, index_axis_names)
        flat = False
    else:
        if index_axis_names is not None:
            raise InputError("give index_axis_names or index_df, not both")
        shape, flat = [len(index_df)], True
    results = torch.zeros(shape, device=model.cfg.device)  # [*axes] or [n_rows]
    for row, index in enumerate(tqdm([[int(v) for v in values] for values in index_df.itertuples(index=False)])):
        name = act_name(activation_name, layer=index[0])
        hook = _patching_hook(patch_setter, index, clean_cache[name])
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])
        results[(row,) if flat else tuple(index)] = patching_metric(logits).detach()
    return (results, index_df) if return_index_df else results


# ------------------------------------------------------------------ patch setters
# Each writes the clean slice into the corrupted activation in place and returns it.
def layer_pos_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                           clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, pos]; any activation laid out [batch, pos, ...] (not a pattern)."""
    _, pos = _unpack(index, 2)
    corrupted_activation[:, pos] = clean_activation[:, pos]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                                       clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, pos, head_index]; a head vector [batch, pos, head, d_head] (q, k, v, z, result)."""
    _, pos, head = _unpack(index, 3)
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                                   clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, head_index]; a head vector [batch, pos, head, d_head], every position."""
    _, head = _unpack(index, 2)
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                                    clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, head_index]; a pattern or scores [batch, head, dest_pos, src_pos], whole."""
    _, head = _unpack(index, 2)
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                                        clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, head_index, dest_pos]; one destination row of a [batch, head, dest, src] pattern."""
    _, head, dest = _unpack(index, 3)
    corrupted_activation[:, head, dest] = clean_activation[:, head, dest]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation: torch.Tensor, index: Sequence[int],
                                                 clean_activation: torch.Tensor) -> torch.Tensor:
    """index = [layer, head_index, dest_pos, src_pos]; one entry of a [batch, head, dest, src] pattern."""
    _, head, dest, src = _unpack(index, 4)
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


def _unpack(index: Sequence[int], n: int) -> Sequence[int]:
    if len(index) != n:
        raise InputError(f"this patch setter takes an index of {n} values, got {list(index)}")
    return index


# ------------------------------------------------------------------ the named sweeps
def _sweep(activation_name: str, patch_setter: PatchSetter, axes: tuple[str, ...], what: str, shape: str):
    """One of TransformerLens's ``get_act_patch_*``: `generic_activation_patch` with its setter,
    activation and axes fixed (given ``index_df``, the axes give way to its rows)."""

    def sweep(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any, patching_metric: Metric,
              index_axis_names: Sequence[AxisName] | None = None, index_df: pd.DataFrame | None = None,
              return_index_df: bool = False) -> torch.Tensor | tuple[torch.Tensor, pd.DataFrame]:
        if index_df is None and index_axis_names is None:
            index_axis_names = axes
        return generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patch_setter,
                                        activation_name, index_axis_names, index_df, return_index_df)

    sweep.__doc__ = (f"Patching results for {what}: a tensor [{shape}] of the metric with that one "
                     f"clean activation patched in (see `generic_activation_patch`).")
    return sweep


_KV_NOTE = "; n_heads is n_kv_heads for a grouped-query model, the heads hook_k/hook_v have"

get_act_patch_resid_pre = _sweep("resid_pre", layer_pos_patch_setter, ("layer", "pos"),
                                 "the residual stream at the start of each block, by position", "n_layers, pos")
get_act_patch_resid_mid = _sweep("resid_mid", layer_pos_patch_setter, ("layer", "pos"),
                                 "the residual stream between attention and MLP, by position", "n_layers, pos")
get_act_patch_attn_out = _sweep("attn_out", layer_pos_patch_setter, ("layer", "pos"),
                                "each attention layer's output, by position", "n_layers, pos")
get_act_patch_mlp_out = _sweep("mlp_out", layer_pos_patch_setter, ("layer", "pos"),
                               "each MLP layer's output, by position", "n_layers, pos")

get_act_patch_attn_head_out_by_pos = _sweep("z", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"),
                                            "each head's output (hook_z), by position", "n_layers, pos, n_heads")
get_act_patch_attn_head_q_by_pos = _sweep("q", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"),
                                          "each head's queries, by position", "n_layers, pos, n_heads")
get_act_patch_attn_head_k_by_pos = _sweep("k", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"),
                                          "each head's keys, by position", "n_layers, pos, n_heads" + _KV_NOTE)
get_act_patch_attn_head_v_by_pos = _sweep("v", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"),
                                          "each head's values, by position", "n_layers, pos, n_heads" + _KV_NOTE)
get_act_patch_attn_head_pattern_by_pos = _sweep(
    "pattern", layer_head_pos_pattern_patch_setter, ("layer", "head_index", "dest_pos"),
    "each head's attention pattern, by destination position", "n_layers, n_heads, dest_pos")
get_act_patch_attn_head_pattern_dest_src_pos = _sweep(
    "pattern", layer_head_dest_src_pos_pattern_patch_setter, ("layer", "head_index", "dest_pos", "src_pos"),
    "each (destination, source) entry of each head's attention pattern", "n_layers, n_heads, dest_pos, src_pos")

get_act_patch_attn_head_out_all_pos = _sweep("z", layer_head_vector_patch_setter, ("layer", "head"),
                                             "each head's output (hook_z), every position", "n_layers, n_heads")
get_act_patch_attn_head_q_all_pos = _sweep("q", layer_head_vector_patch_setter, ("layer", "head"),
                                           "each head's queries, every position", "n_layers, n_heads")
get_act_patch_attn_head_k_all_pos = _sweep("k", layer_head_vector_patch_setter, ("layer", "head"),
                                           "each head's keys, every position", "n_layers, n_heads" + _KV_NOTE)
get_act_patch_attn_head_v_all_pos = _sweep("v", layer_head_vector_patch_setter, ("layer", "head"),
                                           "each head's values, every position", "n_layers, n_heads" + _KV_NOTE)
get_act_patch_attn_head_pattern_all_pos = _sweep("pattern", layer_head_pattern_patch_setter, ("layer", "head_index"),
                                                 "each head's whole attention pattern", "n_layers, n_heads")


# ------------------------------------------------------------------ every activation type at once
def _pad_heads(result: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Zero-pad the last (head) axis to n_heads: a grouped-query k/v sweep has n_kv_heads."""
    return torch.nn.functional.pad(result, (0, n_heads - result.shape[-1]))


def get_act_patch_attn_head_all_pos_every(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any,
                                          metric: Metric) -> torch.Tensor:
    """Every head, every position, for output, query, key, value and pattern: [5, n_layers, n_heads]
    (keys and values of a grouped-query model zero-padded past n_kv_heads)."""
    sweeps = (get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
              get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos,
              get_act_patch_attn_head_pattern_all_pos)
    results = [s(model, corrupted_tokens, clean_cache, metric) for s in sweeps]  # each [l, h]
    return torch.stack([_pad_heads(r, model.cfg.n_heads) for r in results])


def get_act_patch_attn_head_by_pos_every(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any,
                                         metric: Metric) -> torch.Tensor:
    """Every head by position for output, query, key, value and pattern (by destination):
    [5, n_layers, pos, n_heads] (keys and values of a grouped-query model zero-padded)."""
    sweeps = (get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
              get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos)
    results = [s(model, corrupted_tokens, clean_cache, metric) for s in sweeps]  # each [l, p, h]
    pattern = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric)  # [l, h, p]
    results.append(pattern.transpose(1, 2))  # [l, p, h], the others' order
    return torch.stack([_pad_heads(r, model.cfg.n_heads) for r in results])


def get_act_patch_block_every(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any,
                              metric: Metric) -> torch.Tensor:
    """resid_pre, attn_out and mlp_out by position: [3, n_layers, pos]."""
    sweeps = (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
    return torch.stack([s(model, corrupted_tokens, clean_cache, metric) for s in sweeps])


# ------------------------------------------------------------------ direct path patching
def _check_direct_path(model: HookedTransformer, component: str) -> None:
    if component not in ("q", "k", "v"):
        raise InputError(f"component must be 'q', 'k' or 'v', got {component!r}")
    if model.cfg.norm_position == "post":
        # Post-norm normalises the residual sum, so a head's write is not z @ W_O there.
        raise InputError("direct path patching needs a pre-norm model: a post-norm block normalises "
                         "each head's write before the residual add")
    if component != "q" and model.cfg.n_kv_heads != model.cfg.n_heads:
        raise InputError(f"component={component!r} is undefined per query head on a grouped-query model "
                         f"(n_kv_heads={model.cfg.n_kv_heads}, n_heads={model.cfg.n_heads}); use component='q'")


@contextmanager
def _split_qkv_input(model: HookedTransformer) -> Iterator[None]:
    """Each head's own copy of the residual it reads (hook_q/k/v_input), the caller's switches
    restored on exit. hook_attn_in is off meanwhile: a block takes one fork or the other."""
    saved = [(block.use_split_qkv_input, block.use_attn_in) for block in model.blocks]
    try:
        model.set_use_attn_in(False)
        model.set_use_split_qkv_input(True)
        yield
    finally:
        for block, (split, attn_in) in zip(model.blocks, saved):
            block.use_split_qkv_input, block.use_attn_in = split, attn_in


def _add_to_head(delta: torch.Tensor, head: int, fired: list[bool]):
    def hook(fork_input: torch.Tensor, hook: Any) -> torch.Tensor:  # [b, p, h, m]
        fired.append(True)
        patched = fork_input.clone()
        patched[:, :, head] += delta
        return patched

    return hook


def get_act_patch_direct_path(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any,
                              corrupted_cache: Any, patching_metric: Metric, src_layer: int, src_head: int,
                              component: Literal["q", "k", "v"] = "q", verbose: bool = True) -> torch.Tensor:
    """Direct path patching (Wang et al. 2022) of the edge from head (src_layer, src_head) to each
    later head's query (or key, value) input alone: the source head's clean-minus-corrupted write
    ``z @ W_O`` is added, at every position, to that one head's copy of the residual before ln1,
    while every other reader sees the corrupted run. Returns [n_layers, n_heads]; rows up to
    src_layer are 0 (placeholders, not measurements). Keys and values are refused on a
    grouped-query model (a key/value head serves several query heads)."""
    _check_direct_path(model, component)
    _require_eval(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    results = torch.zeros(n_layers, n_heads, device=model.cfg.device)
    W_O = model.blocks[src_layer].attn.W_O[src_head]  # [d_head, d_model]
    z = act_name("z", layer=src_layer)
    delta = (clean_cache[z][:, :, src_head] - corrupted_cache[z][:, :, src_head]) @ W_O  # [b, p, m]
    targets = [(layer, head) for layer in range(src_layer + 1, n_layers) for head in range(n_heads)]
    with _split_qkv_input(model):
        for layer, head in tqdm(targets, desc=f"Direct path patch ({src_layer},{src_head}) -> * [{component}]",
                                disable=not verbose):
            fired: list[bool] = []
            hook = (f"blocks.{layer}.hook_{component}_input", _add_to_head(delta, head, fired))
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[hook])
            if not fired:  # the metric would be of an unpatched run
                raise InputError(f"blocks.{layer}.hook_{component}_input did not fire")
            results[layer, head] = patching_metric(logits).detach()
    return results


def get_act_patch_direct_path_all_sources(model: HookedTransformer, corrupted_tokens: torch.Tensor, clean_cache: Any,
                                          corrupted_cache: Any, patching_metric: Metric,
                                          component: Literal["q", "k", "v"] = "q", verbose: bool = True) -> torch.Tensor:
    """`get_act_patch_direct_path` from every source head: [n_layers, n_heads, n_layers, n_heads],
    ``[sl, sh, dl, dh]`` the edge (sl, sh) -> (dl, dh), 0 where dl <= sl."""
    _check_direct_path(model, component)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    results = torch.zeros(n_layers, n_heads, n_layers, n_heads, device=model.cfg.device)
    sources = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    for layer, head in tqdm(sources, desc=f"Direct path patch, all sources [{component}]", disable=not verbose):
        results[layer, head] = get_act_patch_direct_path(model, corrupted_tokens, clean_cache, corrupted_cache,
                                                         patching_metric, layer, head, component, verbose=False)
    return results
