"""`ActivationCache`: what `run_with_cache` returns, a mapping from hook name to tensor.

Indexing follows TransformerLens: ``cache["blocks.0.attn.hook_pattern"]``, or the short forms
its `utils.get_act_name` reads (`act_name` here): ``cache["pattern", 0]``, ``cache["pattern", 0,
"attn"]``, ``cache["resid_post", -1]`` (a negative layer counts from the end), ``cache["scale",
2, "ln1"]``, ``cache["scale"]`` (ln_final's), ``cache["k6"]``.

The analysis methods TransformerLens notebooks call (`accumulated_resid`, `decompose_resid`,
`stack_head_results`, `logit_attrs`, ...) are one-line delegations to `models.cache_analysis`,
which holds the math as plain functions and says where they differ from TransformerLens; they
need the model the cache came from (``cache.model``), as TransformerLens's do.

Where this cache differs from TransformerLens's on purpose: it can hold a padded batch. Then
``attention_mask`` ([batch, pos], 1 for real tokens) says which positions are real, and
`unpadded(name, i)` gives prompt ``i``'s activation without them; the analysis methods work on
the whole padded tensors (see `models.cache_analysis` for what that means for ``pos_slice``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from probe.errors import InputError, MissingHook
from probe.hook_names import is_attention_hook

from . import cache_analysis as analysis

if TYPE_CHECKING:
    from .cache_analysis import Labelled, SliceInput, Stack
    from .hooked_transformer import HookedTransformer

logger = logging.getLogger(__name__)

# TransformerLens's `utils.get_act_name` tables (plus "scores", an older alias of ours).
_NAME_ALIAS = {"attn": "pattern", "attn_logits": "attn_scores", "scores": "attn_scores", "key": "k", "query": "q",
               "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_LAYER_TYPE_ALIAS = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_NORM_NAMES = {"scale", "normalized"}  # without a layer: ln_final's
_PER_LAYER = _ATTN_NAMES | _MLP_NAMES | {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
_SHORTHAND = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")  # "k6", "scale4ln1"


def act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one, as TransformerLens's `get_act_name`:
    ``act_name("pattern", 3)`` is "blocks.3.attn.hook_pattern", ``act_name("scale", 2, "ln1")``
    "blocks.2.ln1.hook_scale", ``act_name("scale")`` "ln_final.hook_scale", ``act_name("k6")``
    "blocks.6.attn.hook_k". A full name comes back unchanged. A per-layer name without a layer
    is refused (TransformerLens would answer "hook_resid_pre", which no model has)."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = _SHORTHAND.match(name)
    if match is not None:
        name, layer, layer_type = match.group(1), match.group(2), match.group(3)
    name = _NAME_ALIAS.get(name, name)
    if layer is None and name in _PER_LAYER:
        raise MissingHook(f"{name!r} is a per-layer activation; give a layer, e.g. ({name!r}, 0)")
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIAS:
        layer_type = _LAYER_TYPE_ALIAS[layer_type]
    full = (f"blocks.{layer}." if layer is not None else "") + (f"{layer_type}." if layer_type else "")
    full += f"hook_{name}"
    return f"ln_final.{full}" if name in _NORM_NAMES and layer is None else full


get_act_name = act_name  # TransformerLens's name


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one forward pass, keyed by hook name (TransformerLens's constructor:
    ``ActivationCache(cache_dict, model, has_batch_dim=True)``).

    ``model`` is the model that produced it (None for a cache read from a run: the mapping
    works, the analysis methods ask for it). ``attention_mask`` ([batch, pos], 1 for real
    tokens) is kept so downstream code can drop padded positions; `unpadded(name, i)` does
    that for prompt ``i``.
    """

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: HookedTransformer | None = None,
                 has_batch_dim: bool = True, attention_mask: torch.Tensor | None = None):
        self.store = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.attention_mask = attention_mask

    @property
    def cache_dict(self) -> dict[str, torch.Tensor]:
        """The underlying {hook name: tensor} dict (TransformerLens's attribute)."""
        return self.store

    # ------------------------------------------------------------------ the mapping
    def __getitem__(self, key: str | tuple) -> torch.Tensor:  # type: ignore[override]
        if isinstance(key, str) and key in self.store:
            return self.store[key]
        name = act_name(key) if isinstance(key, str) else act_name(*self._positive_layer(key))
        try:
            return self.store[name]
        except KeyError:
            raise MissingHook(
                f"{name!r} is not in this cache; it holds {len(self.store)} names, e.g. "
                f"{list(self.store)[:6]}. Pass names_filter to run_with_cache to record it."
            ) from None

    def _positive_layer(self, key: tuple) -> tuple:
        """(name, -1, ...) -> (name, n_layers - 1, ...), as TransformerLens's cache indexes layers."""
        if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:
            return (key[0], self._n_layers() + key[1], *key[2:])
        return key

    def _n_layers(self) -> int:
        """The model's layer count; without a model, one more than the highest block cached."""
        if self.model is not None:
            return self.model.cfg.n_layers
        blocks = [int(m.group(1)) for name in self.store if (m := re.match(r"blocks\.(\d+)\.", name))]
        if not blocks:
            raise MissingHook("a negative layer needs the layer count: this cache holds no block activations")
        return max(blocks) + 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self.store)} activations: {list(self.store)[:4]}...)"

    # ------------------------------------------------------------------ batch, device, padding
    def remove_batch_dim(self, batch_size: int | None = None) -> ActivationCache:
        """Drop the leading batch axis of a one-prompt cache, in place (TransformerLens's;
        a cache of several prompts is refused). Returns the cache."""
        if not self.has_batch_dim:
            logger.warning("Tried removing batch dimension after already having removed it.")
            return self
        if batch_size is None:
            sizes = Counter(v.shape[0] for v in self.store.values() if v.ndim > 0)
            batch_size = sizes.most_common(1)[0][0] if sizes else 1
        if batch_size != 1:
            raise InputError(f"cannot remove the batch dimension of a cache of {batch_size} prompts; index one first")
        self.store.update({k: v[0] for k, v in self.store.items() if v.ndim > 0 and v.shape[0] == 1})
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[0]  # [pos]
        self.has_batch_dim = False
        return self

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every activation (and the mask) to ``device``, in place; returns the cache."""
        self.store.update({k: v.to(device) for k, v in self.store.items()})
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.to(device)
        return self

    def unpadded(self, name: str, index: int) -> torch.Tensor:
        """The activation for prompt ``index`` with padded positions removed."""
        if not self.has_batch_dim and index != 0:
            raise InputError(f"this cache holds one prompt (its batch dimension was removed), not prompt {index}")
        x = self[name][index] if self.has_batch_dim else self[name]
        if self.attention_mask is None:
            return x
        keep = (self.attention_mask[index] if self.has_batch_dim else self.attention_mask).bool()
        if is_attention_hook(name):
            return x[:, keep][:, :, keep]  # [h, q, k]
        return x[keep]

    # ------------------------------------------------------------------ TransformerLens's analysis methods
    # Each delegates to models.cache_analysis, where the math and its docs are.
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: SliceInput = None, mlp_input: bool = False,
                          return_labels: bool = False) -> Labelled:
        """The logit lens' stack: `models.cache_analysis.accumulated_resid`."""
        return analysis.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False,
                        mode: Literal["all", "mlp", "attn"] = "all", apply_ln: bool = False,
                        pos_slice: SliceInput = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Labelled:
        """The stream as embeddings plus sublayer outputs: `models.cache_analysis.decompose_resid`."""
        return analysis.decompose_resid(self, layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels)

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: SliceInput = None, apply_ln: bool = False) -> Labelled:
        """Per-head outputs: `models.cache_analysis.stack_head_results`."""
        return analysis.stack_head_results(self, layer, return_labels, incl_remainder, pos_slice, apply_ln)

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """One activation over layers: `models.cache_analysis.stack_activation`."""
        return analysis.stack_activation(self, activation_name, layer, sublayer_type)

    def compute_head_results(self) -> None:
        """Adds ``hook_result`` per layer: `models.cache_analysis.compute_head_results`."""
        analysis.compute_head_results(self)

    def get_neuron_results(self, layer: int, neuron_slice: SliceInput = None, pos_slice: SliceInput = None) -> Any:
        """One layer's per-neuron writes: `models.cache_analysis.get_neuron_results`."""
        return analysis.get_neuron_results(self, layer, neuron_slice, pos_slice)

    def stack_neuron_results(self, layer: int, pos_slice: SliceInput = None, neuron_slice: SliceInput = None,
                             return_labels: bool = False, incl_remainder: bool = False, apply_ln: bool = False,
                             mlp_input: bool = False) -> Labelled:
        """Per-neuron writes over layers: `models.cache_analysis.stack_neuron_results`."""
        return analysis.stack_neuron_results(self, layer, pos_slice, neuron_slice, return_labels, incl_remainder,
                                             apply_ln, mlp_input)

    def apply_ln_to_stack(self, residual_stack: Stack, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: SliceInput = None, batch_slice: SliceInput = None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> Stack:
        """A stack through a norm's cached scale: `models.cache_analysis.apply_ln_to_stack`."""
        return analysis.apply_ln_to_stack(self, residual_stack, layer, mlp_input, pos_slice, batch_slice,
                                          has_batch_dim, recompute_ln)

    def logit_attrs(self, residual_stack: Stack, tokens: str | int | torch.Tensor,
                    incorrect_tokens: str | int | torch.Tensor | None = None, pos_slice: SliceInput = None,
                    batch_slice: SliceInput = None, has_batch_dim: bool = True) -> torch.Tensor:
        """Direct logit attribution: `models.cache_analysis.logit_attrs`."""
        return analysis.logit_attrs(self, residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice,
                                    has_batch_dim)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False,
                                     pos_slice: SliceInput = None, return_labels: bool = False) -> Labelled:
        """Heads, neurons, embeddings and biases: `models.cache_analysis.get_full_resid_decomposition`."""
        return analysis.get_full_resid_decomposition(self, layer, mlp_input, expand_neurons, apply_ln, pos_slice,
                                                     return_labels)
