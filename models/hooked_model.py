"""`HookedModel`: what every hooked model of the project shares, the decoder-only and encoder-only
`HookedTransformer` and the `HookedEncoderDecoder` alike: where its weights are, and
TransformerLens's hooks API (`run_with_hooks`, `run_with_cache`, the `set_use_*` switches).

A subclass has ``cfg`` (a `TransformerConfig`), ``embed.W_E`` and a forward pass; it may
override `_tokenize_for_cache` to turn text into the ids and padding mask its forward reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

from probe.errors import InputError
from probe.hook_names import NamesFilter, default_hook_names, name_matcher
from probe.hooks import HookedModule, HookFn, HookName, HookPoint, warn_bwd_hooks_reset

from .activation_cache import ActivationCache

# TransformerLens's opt-in hooks: the `set_use_*` switch of each (they fire when hooked even without it).
OPT_IN_SWITCHES = {"hook_result": "use_attn_result", "hook_attn_in": "use_attn_in", "hook_q_input": "use_split_qkv_input",
                   "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input",
                   "hook_mlp_in": "use_hook_mlp_in"}
ModelInput = Any  # each model says what it takes
# per-layer hooks: decoder-only "blocks.L.", encoder-decoder "encoder.L." and "decoder.L."
_IN_A_BLOCK = re.compile(r"(blocks|encoder|decoder)\.\d+\.")


class HookedModel(HookedModule):
    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def _apply(self, fn, *args, **kwargs):
        """Every move or cast (`to`, `cuda`, `half`, ...) also updates ``cfg.device``/``cfg.dtype``."""
        out = super()._apply(fn, *args, **kwargs)
        self._record_placement()
        return out

    def _record_placement(self) -> None:
        self.cfg._device = str(self.device)
        self.cfg._dtype = self.dtype


    # ------------------------------------------------------------------ hooks API
    def run_with_hooks(self, input: ModelInput, fwd_hooks: Iterable[tuple[HookName, HookFn]] = (),
                       bwd_hooks: Iterable[tuple[HookName, HookFn]] = (), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **kwargs: Any):
        """Forward with hooks attached for this call only (removed even if a hook raises), as
        TransformerLens's. Backward hooks fire on a later ``.backward()`` of this call's output
        (the autograd graph keeps them; TransformerLens's warning about it is repeated), and
        with ``reset_hooks_end=False`` they stay attached until `reset_hooks`."""
        fwd_hooks, bwd_hooks = list(fwd_hooks), list(bwd_hooks)
        warn_bwd_hooks_reset(bwd_hooks, reset_hooks_end)
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(input, **kwargs)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """TransformerLens's switch: compute ``blocks.L.attn.hook_result`` [b, p, h, m] (each
        head's output in d_model) on every pass and cache it by default."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """TransformerLens's switch: give each head its own copy of the residual stream it reads,
        ``blocks.L.hook_q_input`` [b, p, h, m] and ``hook_k_input``/``hook_v_input`` [b, p, kv, m]
        (before ln1, as there), so a hook can patch one head's query, key or value input."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """TransformerLens's switch: ``blocks.L.hook_attn_in`` [b, p, h, m], one copy of the
        stream attention reads per head, shared by its query, key and value."""
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """TransformerLens's switch: cache ``blocks.L.hook_mlp_in`` [b, p, m] (the stream the
        MLP's norm reads) by default. The point fires when hooked even without it."""
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def _opt_in_enabled(self, name: str) -> bool:
        """Whether the opt-in hook ``name`` is switched on by its `set_use_*` flag."""
        switch = next((f for h, f in OPT_IN_SWITCHES.items() if name.endswith(h)), None)
        return switch is not None and _IN_A_BLOCK.match(name) is not None and bool(getattr(self.cfg, switch))

    def is_dormant(self, name: str) -> bool:
        """An opt-in hook whose `set_use_*` switch is off (see `HookedModule.resolve_hook_points`)."""
        return name in self.hook_dict and name not in default_hook_names([name]) and not self._opt_in_enabled(name)

    def _cache_names(self, names_filter: NamesFilter) -> list[str]:
        """The hooks a cache records: those the filter names (a bad name or glob raises
        run_with_hooks's MissingHook); with no filter, or a predicate, all it accepts but the
        opt-in ones not switched on (TransformerLens never calls those)."""
        if names_filter is None or callable(names_filter):
            match = name_matcher(names_filter)
            return [n for n in self.hook_dict if match(n) and not self.is_dormant(n)]
        patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        chosen = {hp.name for pattern in patterns for hp in self.resolve_hook_points(pattern)}
        return [n for n in self.hook_dict if n in chosen]  # in the model's order, as before

    def run_with_cache(self, input: ModelInput, names_filter: NamesFilter = None, device: str | None = None,
                       remove_batch_dim: bool = False, return_cache_object: bool = True, incl_bwd: bool = False,
                       reset_hooks_end: bool = True, clear_contexts: bool = False,
                       **kwargs: Any) -> tuple[Any, ActivationCache | dict[str, torch.Tensor]]:
        """Forward and record activations: returns (output, cache).

        ``names_filter``: None for every hook except the opt-in ones (``hook_result``, the split
        qkv inputs, ``hook_attn_in``, ``hook_mlp_in``; `set_use_attn_result` etc. add them, and
        naming one records it without the switch; `ActivationCache.compute_head_results` derives
        per-head results), a name, a glob, a list of them, or a predicate. Activations are
        detached; ``device`` moves them (e.g. "cpu"). A name the model lacks, or a glob matching
        none of its hooks, is refused (MissingHook, as `run_with_hooks` refuses it) rather than
        answered with a cache lacking it; a predicate may match nothing.

        ``incl_bwd`` (TransformerLens): the output must be a scalar (e.g. ``return_type="loss"``);
        ``.backward()`` is called on it here and each recorded hook's gradient is cached as
        "NAME_grad" (parameters' ``.grad`` accumulate, as there).

        As TransformerLens: the cache knows this model (its analysis methods need the weights);
        ``remove_batch_dim`` drops the batch axis of a one-prompt run (TransformerLens's old
        HookedTransformer silently kept prompt 0 of a larger batch; that is refused here);
        ``return_cache_object=False`` returns the plain {name: tensor} dict instead."""
        names = self._cache_names(names_filter)
        store: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint, suffix: str = "") -> None:
            x = x.detach()
            store[hook.name + suffix] = x.to(device) if device is not None else x

        def save_grad(grad: torch.Tensor, hook: HookPoint) -> None:
            save(grad, hook, "_grad")

        input = self._tokenize_for_cache(input, kwargs)
        if remove_batch_dim and isinstance(input, torch.Tensor) and input.dim() == 2 and input.shape[0] != 1:
            raise InputError(f"remove_batch_dim needs one prompt; this batch has {input.shape[0]}")
        bwd = [(n, save_grad) for n in names] if incl_bwd else []
        with self.hooks([(n, save) for n in names], bwd, reset_hooks_end, clear_contexts):
            out = self(input, **kwargs)
            if incl_bwd:
                _backward_scalar(out)
        cache = ActivationCache(store, self, attention_mask=kwargs.get("attention_mask"))
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, (cache if return_cache_object else cache.cache_dict)


    def _tokenize_for_cache(self, input: Any, kwargs: dict[str, Any]) -> Any:
        """Text to token ids, tokenized once here so the cache keeps the padding mask the forward
        pass used (written into ``kwargs["attention_mask"]``); ids pass through."""
        if isinstance(input, (str, list)):
            tokens = self.tokenize(input, kwargs.pop("prepend_bos", None), kwargs.pop("padding_side", None) or "right")
            input = tokens.ids
            kwargs["attention_mask"] = None if bool(tokens.attention_mask.all()) else tokens.attention_mask
        return input


def _backward_scalar(out: Any) -> None:
    """``out.backward()`` for `run_with_cache(incl_bwd=True)`, refusing a non-scalar output as
    a user error (TransformerLens lets PyTorch raise "grad can be implicitly created only for
    scalar outputs")."""
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"incl_bwd=True backpropagates from the output, which must be a scalar "
                         f"(return_type='loss'); got {shape}")
    out.backward()
