"""Autoregressive sampling with a KV cache; hooks fire at every step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from probe.errors import InputError

from .components import KVCache
from .tokens import pad

if TYPE_CHECKING:
    from .hooked_transformer import HookedTransformer


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of [b, vocab] logits."""
    if temperature <= 0:
        raise InputError("temperature must be > 0 when sampling; use do_sample=False for greedy decoding")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the top token stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def generate(
    model: HookedTransformer,
    input: str | list[str] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    do_sample: bool = False,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    seed: int | None = None,
    use_kv_cache: bool = True,
    return_type: Literal["str", "tokens"] | None = None,
    attention_mask: torch.Tensor | None = None,
):
    cfg = model.cfg
    if not cfg.causal or not cfg.has_unembed:
        raise InputError(f"{cfg.model_name} is an encoder without an LM head; generate() needs a decoder")
    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0")
    if isinstance(input, (str, list)):
        tok = model.tokenize(input, padding_side="left")  # left-pad so every row ends at the same column
        tokens, mask = tok.ids.to(model.device), tok.attention_mask.to(model.device)
        return_type = return_type or "str"
    else:
        tokens = (input if input.dim() == 2 else input[None]).to(model.device)
        mask = attention_mask.to(model.device) if attention_mask is not None else torch.ones_like(tokens)
        return_type = return_type or "tokens"
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(model.tokenizer, "eos_token_id", None)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=model.device)

    cache = KVCache(cfg.n_layers) if use_kv_cache else None
    step_input, step_mask = tokens, mask
    for _ in range(max_new_tokens):
        if tokens.shape[1] >= cfg.n_ctx and cfg.positional in ("learned", "sinusoidal"):
            break
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1]:]
        logits = model(step_input, attention_mask=step_mask, position_ids=positions, kv_cache=cache)
        last = logits[:, -1, :].float()
        if do_sample:
            probs = filter_logits(last, temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(model.device)[:, 0]
        else:
            nxt = last.argmax(-1)
        if eos is not None and stop_at_eos:
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat((tokens, nxt[:, None]), 1)
        mask = torch.cat((mask, torch.ones_like(nxt[:, None])), 1)
        if cache is not None:
            step_input, step_mask = nxt[:, None], torch.ones_like(nxt[:, None])
        else:
            step_input, step_mask = tokens, mask
        if eos is not None and stop_at_eos:
            finished |= nxt == eos
            if bool(finished.all()):
                break
    if return_type == "tokens":
        return tokens
    texts = []
    for row, m in zip(tokens.tolist(), mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep]
        texts.append(model.tokenizer.decode(ids, skip_special_tokens=True))
    return texts[0] if isinstance(input, str) else texts


__all__ = ["generate", "filter_logits", "pad"]
