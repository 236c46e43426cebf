"""The analysis behind `ActivationCache`'s TransformerLens methods (logit lens, residual
decomposition, direct logit attribution), as plain functions of a cache and its model.

Why this lives in `models` and not in `analyses`: the cache's methods (``cache.decompose_resid()``
and the rest, which notebook code written for TransformerLens calls) delegate here, and `models`
may not import `analyses` (docs/design.md, "Layers"). The cache stays a small mapping; each of
its methods is one line calling the function of the same name here, so the math is in one place
and an analysis can call these functions directly.

Names, arguments, defaults, labels and shapes follow TransformerLens 4.x's `ActivationCache`
(which reads the same as the HookedTransformer era's). A stack is [component, *batch_and_pos,
d_model]; the leading batch axis is absent after `remove_batch_dim`, and an int ``pos_slice``
drops the position axis.

Slices (``pos_slice``, ``batch_slice``, ``neuron_slice``) mean what TransformerLens's `Slice`
means: None keeps the axis, an int indexes it (and drops it), a `slice` or a tuple (read as
``slice(*t)``) slices it, a list / 1-D tensor / array picks those indices; a TransformerLens
`Slice` object is accepted too.

Where this differs from TransformerLens on purpose:
- A ``layer`` outside [0, n_layers] (after -1/None mean n_layers) is refused; TransformerLens
  silently returns an empty stack for ``layer=-2``.
- With ``incl_remainder`` and ``layer=0``, the remainder is the residual stream entering layer 0
  (``resid_pre`` 0: nothing before it was stacked). TransformerLens reads ``resid_post`` of layer
  -1, i.e. of the *last* layer, through negative indexing.
- A padded batch (our caches can hold one; ``cache.attention_mask`` says which positions are
  real) is decomposed as a whole, as TransformerLens would: every identity holds at every
  position, but a padded position's numbers come from a pad token and mean nothing, and an int
  ``pos_slice`` such as -1 picks the same column in every row, which is a pad in the shorter
  rows of a right-padded batch. Read each row's last real position (from the mask) instead.
- `compute_head_results` stores detached results, as every other cached activation is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import einops
import numpy as np
import torch

from probe.errors import InputError
from probe.head_labels import head_label

if TYPE_CHECKING:
    from .activation_cache import ActivationCache
    from .hooked_transformer import HookedTransformer

SliceInput = int | slice | tuple | list | torch.Tensor | np.ndarray | None
Stack = torch.Tensor  # [component, *batch_and_pos, d_model]
Labelled = Stack | tuple[Stack, list[str]]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- slices and layers
def as_index(s: Any) -> int | slice | torch.Tensor:
    """A slice input as an index for one axis, with TransformerLens's `Slice` semantics."""
    if hasattr(s, "mode") and hasattr(s, "slice"):  # a transformer_lens Slice
        s = s.slice
    if s is None:
        return slice(None)
    if isinstance(s, bool):
        raise InputError(f"a slice is an int, a slice, a tuple, a list of indices or None, not {s!r}")
    if isinstance(s, (int, np.integer)) or (isinstance(s, torch.Tensor) and s.ndim == 0):
        return int(s)
    if isinstance(s, tuple):
        return slice(*s)
    if isinstance(s, slice):
        return s
    if isinstance(s, (list, np.ndarray, torch.Tensor)):
        return torch.as_tensor(np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s), dtype=torch.long)
    raise InputError(f"a slice is an int, a slice, a tuple, a list of indices or None, not {type(s).__name__}")


def apply_slice(x: torch.Tensor, s: Any, dim: int) -> torch.Tensor:
    """``x`` indexed by ``s`` along ``dim`` (negative dims count from the end)."""
    index: list[Any] = [slice(None)] * x.ndim
    index[dim] = as_index(s)
    return x[tuple(index)]


def _keep_axis(s: Any) -> Any:
    """An int slice as a one-element list, so the axis survives (TransformerLens's `Slice.unwrap`)."""
    index = as_index(s)
    return [index] if isinstance(index, int) else s


def _is_int(s: Any) -> bool:
    return isinstance(as_index(s), int)


def model_of(cache: ActivationCache) -> HookedTransformer:
    """The model a cache came from; the analysis needs its config and weights."""
    if cache.model is None:
        raise InputError("this cache does not know its model (e.g. it was read from a run); set cache.model = model "
                         "(the model that produced it) to use its analysis methods")
    return cache.model


def _layer(cache: ActivationCache, layer: int | None) -> int:
    """TransformerLens's layer argument: None and -1 mean n_layers (the unembedding's input)."""
    n = model_of(cache).cfg.n_layers
    layer = n if layer is None or layer == -1 else layer
    if not 0 <= layer <= n:
        raise InputError(f"layer must be in [0, {n}] (or -1/None for {n}, the unembedding's input), got {layer}")
    return layer


def _stream_into(cache: ActivationCache, layer: int) -> torch.Tensor:
    """The residual stream entering ``layer`` (layer n_layers: the final one)."""
    n = model_of(cache).cfg.n_layers
    return cache["resid_post", n - 1] if layer == n else cache["resid_pre", layer]


def _stack(parts: list[torch.Tensor], pos_slice: Any) -> Stack:
    return torch.stack([apply_slice(p, pos_slice, -2) for p in parts])


def _empty(cache: ActivationCache, pos_slice: Any) -> Stack:
    """An empty stack [0, *batch_and_pos, d_model] (TransformerLens reads the shape from hook_embed)."""
    like = apply_slice(cache["hook_embed"], pos_slice, -2)
    return like.new_zeros((0, *like.shape))


def _out(stack: Stack, labels: list[str], return_labels: bool) -> Labelled:
    return (stack, labels) if return_labels else stack


# ---------------------------------------------------------------- norms
def apply_ln_to_stack(cache: ActivationCache, residual_stack: Stack, layer: int | None = None, mlp_input: bool = False,
                      pos_slice: SliceInput = None, batch_slice: SliceInput = None, has_batch_dim: bool = True,
                      recompute_ln: bool = False) -> Stack:
    """Each component as the norm of ``layer`` (ln1, ln2 with ``mlp_input``, ln_final for
    n_layers) sees it inside the whole stream: centred (LayerNorm) and divided by the *cached*
    scale of the whole stream, so the components still add up to the normalised stream. The
    norm's weight is not applied (after `fold_ln` it lives in the next layer). With
    ``recompute_ln`` at the final layer, ln_final itself is applied to each component with its
    own statistics (the logit lens). ``pos_slice`` must already be applied to the stack; it and
    ``batch_slice`` select the matching scales."""
    cfg = model_of(cache).cfg
    layer = _layer(cache, layer)
    if has_batch_dim:
        residual_stack = apply_slice(residual_stack, batch_slice, 1)
    if cfg.norm_position == "post":
        raise InputError("apply_ln_to_stack needs pre-norm blocks: a post-norm model normalises the stream itself")
    final = layer == cfg.n_layers
    if recompute_ln and final and cfg.final_norm:
        # The module itself (its own math, weights included as TransformerLens's ln_final has
        # them); it works on any leading shape.
        return model_of(cache).ln_final(residual_stack)
    if cfg.norm == "layernorm" and not (final and cfg.final_rms):
        residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
    return residual_stack / _cached_scale(cache, layer, mlp_input, pos_slice, batch_slice)


def _cached_scale(cache: ActivationCache, layer: int, mlp_input: bool, pos_slice: Any,
                  batch_slice: Any) -> torch.Tensor:
    """The norm's cached divisor [*batch_and_pos, 1] for the stream entering ``layer``."""
    final = layer == model_of(cache).cfg.n_layers
    scale = cache["ln_final.hook_scale" if final else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"]
    scale = apply_slice(scale, pos_slice, -2)
    return apply_slice(scale, batch_slice, 0) if cache.has_batch_dim else scale


# ---------------------------------------------------------------- the residual stream
def accumulated_resid(cache: ActivationCache, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                      pos_slice: SliceInput = None, mlp_input: bool = False, return_labels: bool = False) -> Labelled:
    """The residual stream entering each layer up to ``layer`` ("0_pre", "1_pre", ...,
    "final_post"; "{l}_mid" too with ``incl_mid``, and the current layer's with ``mlp_input``):
    the logit lens. ``apply_ln`` at the final layer applies ln_final to each entry afresh (so
    the last one is what the unembedding reads); at an earlier layer it uses that layer's
    cached scale, as `apply_ln_to_stack`."""
    n = model_of(cache).cfg.n_layers
    layer = _layer(cache, layer)
    parts, labels = [], []
    for lay in range(layer + 1):
        if lay == n:
            parts.append(cache["resid_post", n - 1])
            labels.append("final_post")
            continue
        parts.append(cache["resid_pre", lay])
        labels.append(f"{lay}_pre")
        if (incl_mid and lay < layer) or (mlp_input and lay == layer):
            parts.append(cache["resid_mid", lay])
            labels.append(f"{lay}_mid")
    stack = _stack(parts, pos_slice)  # [component, *batch_and_pos, m]
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                  has_batch_dim=cache.has_batch_dim, recompute_ln=layer == n)
    return _out(stack, labels, return_labels)


def decompose_resid(cache: ActivationCache, layer: int | None = None, mlp_input: bool = False,
                    mode: Literal["all", "mlp", "attn"] = "all", apply_ln: bool = False, pos_slice: SliceInput = None,
                    incl_embeds: bool = True, return_labels: bool = False) -> Labelled:
    """The residual stream entering ``layer`` as the sum of what wrote it: "embed", "pos_embed",
    then "{l}_attn_out" and "{l}_mlp_out" per earlier layer (``mode`` keeps one kind; with
    ``mlp_input`` the current layer's attention output too). Direct logit attribution's terms."""
    cfg = model_of(cache).cfg
    layer = _layer(cache, layer)
    incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not cfg.attn_only
    parts, labels = [], []
    if incl_embeds:
        for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
            if name in cache.cache_dict:
                parts.append(cache[name])
                labels.append(label)
    for lay in range(layer):
        for kind, wanted in (("attn", incl_attn), ("mlp", incl_mlp)):
            if wanted:
                parts.append(cache[f"{kind}_out", lay])
                labels.append(f"{lay}_{kind}_out")
    if mlp_input and incl_attn:
        parts.append(cache["attn_out", layer])
        labels.append(f"{layer}_attn_out")
    stack = _stack(parts, pos_slice) if parts else _empty(cache, pos_slice)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
    return _out(stack, labels, return_labels)


def stack_activation(cache: ActivationCache, activation_name: str, layer: int = -1,
                     sublayer_type: str | None = None) -> torch.Tensor:
    """One activation of every layer before ``layer``, stacked: [layer, ...]."""
    layer = _layer(cache, layer)
    return torch.stack([cache[activation_name, lay, sublayer_type] for lay in range(layer)])


# ---------------------------------------------------------------- heads
def compute_head_results(cache: ActivationCache) -> None:
    """Store each layer's per-head outputs ``hook_result`` [*batch, pos, head, d_model] = z @ W_O
    (attn_out is their sum plus b_O), for heads run without the hook recorded; warns if they
    all were already there, as TransformerLens does."""
    if _ensure_head_results(cache):
        logger.warning("Tried to compute head results when they were already cached")


def _ensure_head_results(cache: ActivationCache) -> bool:
    """Compute the missing (or malformed) head results; True if all were already cached."""
    model = model_of(cache)
    expected_ndim = 4 if cache.has_batch_dim else 3
    all_cached = True
    for lay in range(model.cfg.n_layers):
        key = f"blocks.{lay}.attn.hook_result"
        cached = cache.cache_dict.get(key)
        if cached is not None and cached.ndim == expected_ndim and cached.shape[-2] == model.cfg.n_heads:
            continue
        all_cached = False
        z = cache["z", lay, "attn"]  # [*batch, pos, h, d]
        w_o = model.blocks[lay].attn.W_O.detach().to(z.device, z.dtype)  # [h, d, m]
        cache.cache_dict[key] = einops.einsum(z, w_o, "... h d, h d m -> ... h m")
    return all_cached


def stack_head_results(cache: ActivationCache, layer: int = -1, return_labels: bool = False,
                       incl_remainder: bool = False, pos_slice: SliceInput = None, apply_ln: bool = False) -> Labelled:
    """Every head's output before ``layer``, [layer * n_heads (+1), *batch_and_pos, d_model],
    labelled "L0H0", ...; ``incl_remainder`` adds what the heads do not explain of the stream
    entering ``layer`` ("remainder": embeddings, MLPs, biases), so the stack sums to it."""
    cfg = model_of(cache).cfg
    layer = _layer(cache, layer)
    _ensure_head_results(cache)
    parts = [apply_slice(cache["result", lay, "attn"], pos_slice, -3) for lay in range(layer)]  # [*bp, h, m]
    labels = [head_label(lay, h) for lay in range(layer) for h in range(cfg.n_heads)]
    stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else _empty(cache, pos_slice)
    if incl_remainder:
        stack, labels = _with_remainder(stack, labels, apply_slice(_stream_into(cache, layer), pos_slice, -2))
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice)
    return _out(stack, labels, return_labels)


def _with_remainder(stack: Stack, labels: list[str], target: torch.Tensor) -> tuple[Stack, list[str]]:
    """The stack with one more component, "remainder", making it sum to ``target``."""
    remainder = target - stack.sum(0)  # [*batch_and_pos, m]
    return torch.cat([stack, remainder[None]]), [*labels, "remainder"]


# ---------------------------------------------------------------- neurons
def get_neuron_results(cache: ActivationCache, layer: int, neuron_slice: SliceInput = None,
                       pos_slice: SliceInput = None) -> torch.Tensor:
    """Each neuron's write to the residual stream in one layer, [*batch_and_pos, neuron,
    d_model] = post * W_out (not cached: cheap to compute, large to keep)."""
    acts = apply_slice(cache["post", layer, "mlp"], pos_slice, -2)  # [*bp, f]
    w_out = model_of(cache).blocks[layer].mlp.W_out.to(acts.device)  # [f, m]
    acts, w_out = apply_slice(acts, neuron_slice, -1), apply_slice(w_out, neuron_slice, 0)
    return acts[..., None] * w_out


def stack_neuron_results(cache: ActivationCache, layer: int, pos_slice: SliceInput = None,
                         neuron_slice: SliceInput = None, return_labels: bool = False, incl_remainder: bool = False,
                         apply_ln: bool = False, mlp_input: bool = False) -> Labelled:
    """Every neuron's write before ``layer``, [layer * neurons (+1), *batch_and_pos, d_model],
    labelled "L0N0", ...; ``incl_remainder`` adds "remainder" up to the stream entering
    ``layer`` (its MLP's input, ``resid_mid``, with ``mlp_input``)."""
    cfg = model_of(cache).cfg
    layer = _layer(cache, layer)
    neuron_slice = _keep_axis(neuron_slice)  # layers are concatenated along the neuron axis
    neurons = apply_slice(torch.arange(cfg.d_mlp), neuron_slice, 0).tolist()
    labels = [f"L{lay}N{n}" for lay in range(layer) for n in neurons]
    parts = [get_neuron_results(cache, lay, neuron_slice, pos_slice) for lay in range(layer)]  # [*bp, f, m]
    stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else _empty(cache, pos_slice)
    if incl_remainder:
        target = cache["resid_mid", layer] if mlp_input else _stream_into(cache, layer)
        stack, labels = _with_remainder(stack, labels, apply_slice(target, pos_slice, -2))
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
    return _out(stack, labels, return_labels)


# ---------------------------------------------------------------- the full decomposition
def accumulated_bias(model: HookedTransformer, layer: int, mlp_input: bool = False,
                     include_mlp_biases: bool = True) -> torch.Tensor:
    """The biases written to the residual stream before ``layer`` [d_model]: each attention's
    b_O (and the current layer's with ``mlp_input``) and, with ``include_mlp_biases``, each
    MLP's b_out (TransformerLens's `accumulated_bias`)."""
    total = model.W_E.new_zeros(model.cfg.d_model)
    for lay in range(layer):
        block = model.blocks[lay]
        total = total + block.attn.b_O
        if include_mlp_biases and not model.cfg.attn_only:
            total = total + block.mlp.b_out
    if mlp_input:
        if layer >= model.cfg.n_layers:
            raise InputError("mlp_input: the final layer's input is the unembedding's, which has no MLP")
        total = total + model.blocks[layer].attn.b_O
    return total


def get_full_resid_decomposition(cache: ActivationCache, layer: int | None = None, mlp_input: bool = False,
                                 expand_neurons: bool = True, apply_ln: bool = False, pos_slice: SliceInput = None,
                                 return_labels: bool = False) -> Labelled:
    """The stream entering ``layer`` split as finely as it goes: every head ("L0H0", ...),
    every neuron ("L0N0", ..., or each "{l}_mlp_out" without ``expand_neurons``), "embed",
    "pos_embed" and "bias" (the summed b_O and b_out, which no head or neuron owns). The
    components sum to the stream."""
    model = model_of(cache)
    layer = _layer(cache, layer)
    heads, labels = stack_head_results(cache, layer + (1 if mlp_input else 0), pos_slice=pos_slice,
                                       return_labels=True)
    parts = [heads]
    if not model.cfg.attn_only and layer > 0:
        if expand_neurons:
            mlps, mlp_labels = stack_neuron_results(cache, layer, pos_slice=pos_slice, return_labels=True,
                                                    mlp_input=mlp_input)
        else:
            mlps, mlp_labels = decompose_resid(cache, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                               incl_embeds=False, mode="mlp", return_labels=True)
        parts.append(mlps)
        labels += mlp_labels
    for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
        if name in cache.cache_dict:
            parts.append(apply_slice(cache[name], pos_slice, -2)[None])
            labels.append(label)
    bias = accumulated_bias(model, layer, mlp_input, include_mlp_biases=expand_neurons)  # [m]
    parts.append(bias.to(heads.device).expand((1, *heads.shape[1:])))
    labels.append("bias")
    stack = torch.cat(parts)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
    return _out(stack, labels, return_labels)


# ---------------------------------------------------------------- logit attribution
def tokens_to_residual_directions(model: HookedTransformer, tokens: str | int | torch.Tensor) -> torch.Tensor:
    """The unembedding direction of each token, [*tokens.shape, d_model] ([d_model] for one
    token: a string, an int or a one-element tensor), as TransformerLens's model method."""
    if isinstance(tokens, torch.Tensor) and tokens.numel() > 1:
        return model.W_U[:, tokens].movedim(0, -1)
    if isinstance(tokens, str):
        token = model.to_single_token(tokens)
    elif isinstance(tokens, (int, np.integer)) or (isinstance(tokens, torch.Tensor) and tokens.numel() == 1):
        token = int(tokens)
    else:
        raise InputError(f"tokens must be a str, an int or a tensor of token ids, not {type(tokens).__name__}")
    return model.W_U[:, token]


def _token_shape(tokens: Any) -> tuple[int, ...]:
    return tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else ()  # a str or an int: one token


def logit_attrs(cache: ActivationCache, residual_stack: Stack, tokens: str | int | torch.Tensor,
                incorrect_tokens: str | int | torch.Tensor | None = None, pos_slice: SliceInput = None,
                batch_slice: SliceInput = None, has_batch_dim: bool = True) -> torch.Tensor:
    """Each component's direct contribution to the logit of ``tokens`` (or to the logit
    difference with ``incorrect_tokens``), [component, *batch_and_pos]: the stack through
    ln_final's cached scale (`apply_ln_to_stack` at the final layer), dotted with the tokens'
    unembedding directions. A [batch] tensor of tokens gives one token per prompt, broadcast
    over positions. Their sum is the logit (difference) less b_U (and less what center_unembed
    subtracted) when the weights are processed (fold_ln, center_writing_weights)."""
    model = model_of(cache)
    directions = tokens_to_residual_directions(model, tokens)  # [*tokens, m]
    if incorrect_tokens is not None:
        if _token_shape(tokens) != _token_shape(incorrect_tokens):
            raise InputError(f"tokens and incorrect_tokens must have the same shape, got "
                             f"{_token_shape(tokens)} and {_token_shape(incorrect_tokens)}")
        directions = directions - tokens_to_residual_directions(model, incorrect_tokens)
    scaled = apply_ln_to_stack(cache, residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                               has_batch_dim=has_batch_dim)  # [component, *batch_and_pos, m]
    if (has_batch_dim and not _is_int(batch_slice) and scaled.ndim == 4 and directions.ndim == 2
            and directions.shape[0] == scaled.shape[1]):
        directions = directions.unsqueeze(-2)  # per-prompt tokens broadcast over positions
    return (scaled * directions.to(scaled.device)).sum(-1)
