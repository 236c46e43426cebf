"""`ActivationCache`: what `run_with_cache` returns, a mapping from hook name to tensor.

Indexing follows TransformerLens: ``cache["blocks.0.attn.hook_pattern"]`` or the short
form ``cache["pattern", 0]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from probe.errors import MissingHook
from probe.hook_names import is_attention_hook

# Short names, as TransformerLens's `utils.get_act_name` spells them.
_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "token_type_embed": "hook_token_type_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "rot_q": "blocks.{l}.attn.hook_rot_q",
    "rot_k": "blocks.{l}.attn.hook_rot_k",
    "z": "blocks.{l}.attn.hook_z",
    "result": "blocks.{l}.attn.hook_result",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "attn": "blocks.{l}.attn.hook_pattern",
    "pre": "blocks.{l}.mlp.hook_pre",
    "pre_linear": "blocks.{l}.mlp.hook_pre_linear",
    "post": "blocks.{l}.mlp.hook_post",
}


def act_name(name: str, layer: int | None = None) -> str:
    """Full hook name from a short one: ``act_name("pattern", 3)``."""
    if name not in _SHORT:
        return name
    full = _SHORT[name]
    if "{l}" in full:
        if layer is None:
            raise MissingHook(f"{name!r} is a per-layer activation; give a layer, e.g. ({name!r}, 0)")
        return full.format(l=layer)
    return full


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations of one forward pass, keyed by hook name.

    ``attention_mask`` ([batch, pos], 1 for real tokens) is kept so downstream code can
    drop padded positions; `unpadded(name, i)` does that for prompt ``i``.
    """

    def __init__(self, store: dict[str, torch.Tensor], attention_mask: torch.Tensor | None = None):
        self.store = store
        self.attention_mask = attention_mask

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:  # type: ignore[override]
        name = act_name(*key) if isinstance(key, tuple) else act_name(key)
        try:
            return self.store[name]
        except KeyError:
            raise MissingHook(
                f"{name!r} is not in this cache; it holds {len(self.store)} names, e.g. "
                f"{list(self.store)[:6]}. Pass names_filter to run_with_cache to record it."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self.store)} activations: {list(self.store)[:4]}...)"

    def unpadded(self, name: str, index: int) -> torch.Tensor:
        """The activation for prompt ``index`` with padded positions removed."""
        x = self[name][index]
        if self.attention_mask is None:
            return x
        keep = self.attention_mask[index].bool()
        if is_attention_hook(name):
            return x[:, keep][:, :, keep]  # [h, q, k]
        return x[keep]
