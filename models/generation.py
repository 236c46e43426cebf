"""Autoregressive generation with TransformerLens's `generate` arguments; hooks fire at every
step. The sampling rule (`filter_logits`, `sample_logits`) is TransformerLens's `sample_logits`:
temperature, then the frequency penalty, then top-k or else top-p."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from probe.errors import InputError

from .components import KVCache
from .tokens import pad

if TYPE_CHECKING:
    from .hooked_transformer import HookedTransformer

ReturnType = Literal["input", "str", "tokens", "tensor"]


def token_counts(tokens: torch.Tensor, vocab: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[b, vocab] how often each id occurs in each row of ``tokens`` (only where ``mask`` is 1)."""
    weights = torch.ones_like(tokens, dtype=torch.float32) if mask is None else mask.to(torch.float32)
    counts = torch.zeros(tokens.shape[0], vocab, dtype=torch.float32, device=tokens.device)
    return counts.scatter_add_(1, tokens.long(), weights)


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # clamped, as TL and HF
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    # TransformerLens's rule: drop a token once the mass *before* it exceeds top_p (the
    # smallest set whose mass reaches top_p stays; the top token always stays).
    drop_sorted = cum > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                  freq_penalty: float = 0.0, tokens: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The [b, vocab] logits TransformerLens's `sample_logits` draws from: divided by
    ``temperature``, minus ``freq_penalty`` times each id's count in ``tokens`` (so the penalty
    is not scaled by the temperature), then top-k, or else top-p, filtering.

    ``mask`` ([b, pos], 1 for real tokens) keeps padding out of the counts; TransformerLens
    counts every column. Giving both ``top_k`` and ``top_p`` is refused: TransformerLens would
    silently apply only ``top_k``."""
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 to sample (0 means greedy), got {temperature}")
    check_freq_penalty(freq_penalty)
    if top_k is not None and top_p is not None:
        raise InputError("top_k and top_p are mutually exclusive (TransformerLens applies only top_k); pass one")
    logits = logits / temperature
    if freq_penalty > 0:
        if tokens is None:
            raise InputError("freq_penalty needs the tokens generated so far")
        logits = logits - freq_penalty * token_counts(tokens, logits.shape[-1], mask)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    elif top_p is not None:
        logits = _top_p(logits, top_p)
    return logits


def check_freq_penalty(freq_penalty: float) -> None:
    # A negative penalty would be a bonus TransformerLens refuses too (ValueError there).
    if freq_penalty < 0:
        raise InputError(f"freq_penalty must be >= 0, got {freq_penalty}")


def sample_logits(final_logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                  temperature: float = 1.0, freq_penalty: float = 0.0, tokens: torch.Tensor | None = None,
                  *, mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """[b] next ids, as TransformerLens's `sample_logits`: ``temperature == 0`` is greedy (the
    penalty then has no effect, as there). Without a ``generator`` the draw is
    ``Categorical(logits).sample()`` on torch's global generator, exactly TransformerLens's, so
    ``torch.manual_seed`` reproduces its samples; with one, the draw is made on the CPU."""
    check_freq_penalty(freq_penalty)
    if temperature == 0:
        return final_logits.argmax(-1)
    logits = filter_logits(final_logits, temperature, top_k, top_p, freq_penalty, tokens, mask).float()
    if generator is None:
        return torch.distributions.categorical.Categorical(logits=logits).sample()
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(final_logits.device)


def stop_tokens(model: HookedTransformer, stop_at_eos: bool,
                eos_token_id: int | Sequence[int] | None) -> tuple[list[int], int | None]:
    """(ids that end a sequence, the id a finished row is padded with), as TransformerLens:
    an int is both; for a list, the tokenizer's EOS pads (else the list's first id)."""
    if not stop_at_eos:
        return [], None
    tokenizer_eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos_token_id is None:
        eos_token_id = model.cfg.eos_token_id if model.cfg.eos_token_id is not None else tokenizer_eos
    if eos_token_id is None:
        return [], None  # nothing to stop at (toy vocabularies); TransformerLens asserts instead
    if isinstance(eos_token_id, int):
        return [eos_token_id], eos_token_id
    ids = [int(i) for i in eos_token_id]
    if not ids:
        raise InputError("eos_token_id is an empty list; pass at least one id, or stop_at_eos=False")
    return ids, tokenizer_eos if tokenizer_eos is not None else ids[0]


def prompt_tokens(model: HookedTransformer, input: str | list[str] | torch.Tensor, prepend_bos: bool | None,
                  padding_side: str | None, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """([b, pos] ids, [b, pos] mask) of the prompt; texts are left-padded so every row's last
    real token is the last column, the one whose logits predict the next token."""
    if padding_side not in (None, "left"):
        raise InputError(f"generate left-pads its prompts (each row must end at the last column); "
                         f"padding_side={padding_side!r} is not supported")
    if isinstance(input, str) and input == "":
        return _bos_only(model, prepend_bos)
    if isinstance(input, (str, list)):
        tok = model.tokenize(input, prepend_bos, padding_side="left")
        return tok.ids.to(model.device), tok.attention_mask.to(model.device)
    if not isinstance(input, torch.Tensor) or input.is_floating_point():
        raise InputError(f"input must be a str, a list of str or a LongTensor of token ids, got {type(input).__name__}")
    tokens = (input if input.dim() == 2 else input[None]).to(model.device)
    mask = attention_mask.to(model.device) if attention_mask is not None else torch.ones_like(tokens)
    if mask.shape != tokens.shape:
        raise InputError(f"attention_mask has shape {tuple(mask.shape)}, the prompt {tuple(tokens.shape)}")
    return tokens, mask


def _bos_only(model: HookedTransformer, prepend_bos: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    # TransformerLens's default input "" is a prompt of just the BOS token: unconditional text.
    bos = model.cfg.bos_token_id if model.cfg.bos_token_id is not None else getattr(model.tokenizer, "bos_token_id", None)
    if bos is None or prepend_bos is False:
        raise InputError("an empty prompt needs a BOS token to start from; pass a prompt")
    tokens = torch.tensor([[bos]], device=model.device)
    return tokens, torch.ones_like(tokens)


def check_sampling_args(do_sample: bool, temperature: float, freq_penalty: float) -> None:
    check_freq_penalty(freq_penalty)
    # Greedy with a temperature other than TransformerLens's default (1.0) or its greedy value
    # (0.0) would silently ignore the temperature, as TransformerLens does; refuse it instead.
    if not do_sample and temperature not in (0.0, 1.0):
        raise InputError(f"temperature={temperature} has no effect when do_sample=False (greedy); "
                         "pass do_sample=True to sample at that temperature")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 is greedy), got {temperature}")


def resolve_return_type(return_type: str | None, input: Any) -> Literal["str", "tokens"]:
    text_input = isinstance(input, (str, list))
    if return_type in (None, "input"):
        return "str" if text_input else "tokens"
    if return_type == "tensor":  # TransformerLens 1.x's name
        return "tokens"
    if return_type not in ("str", "tokens"):
        raise InputError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}")
    return return_type


def decode(model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor, input: Any) -> str | list[str]:
    """Texts without padding or special tokens (BOS); one str for a str input or a one-row
    tensor (as TransformerLens's bridge), else a list."""
    if model.tokenizer is None:
        raise InputError("return_type='str' needs a tokenizer; this model has none")
    texts = [model.tokenizer.decode([t for t, keep in zip(row, m) if keep], skip_special_tokens=True)
             for row, m in zip(tokens.tolist(), mask.tolist())]
    if isinstance(input, str) or (isinstance(input, torch.Tensor) and len(texts) == 1):
        return texts[0]
    return texts


def _steps(max_new_tokens: int, verbose: bool):
    if not verbose:
        return range(max_new_tokens)
    from tqdm.auto import tqdm  # only for the progress bar (a transformers dependency)

    return tqdm(range(max_new_tokens))


def generate(
    model: HookedTransformer,
    input: str | list[str] | torch.Tensor = "",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    return_type: ReturnType | None = "input",
    verbose: bool = True,
    *,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> str | list[str] | torch.Tensor:
    """See `HookedTransformer.generate`."""
    cfg = model.cfg
    if not cfg.causal or not cfg.has_unembed:
        raise InputError(f"{cfg.model_name} is an encoder without an LM head; generate() needs a decoder")
    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0")
    check_sampling_args(do_sample, temperature, freq_penalty)
    out_type = resolve_return_type(return_type, input)
    tokens, mask = prompt_tokens(model, input, prepend_bos, padding_side, attention_mask)
    stops, eos_pad = stop_tokens(model, stop_at_eos, eos_token_id)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=model.device)
    gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=model.device)

    cache = KVCache(cfg.n_layers) if use_past_kv_cache else None
    step_input, step_mask = tokens, mask
    for _ in _steps(max_new_tokens, verbose):
        if tokens.shape[1] >= cfg.n_ctx and cfg.positional in ("learned", "sinusoidal"):
            break  # no position embedding beyond the context
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1]:]
        logits = model(step_input, attention_mask=step_mask, position_ids=positions, kv_cache=cache)
        last = logits[:, -1, :].float()
        if do_sample:
            nxt = sample_logits(last, top_k, top_p, temperature, freq_penalty, tokens, mask=mask, generator=gen)
        else:
            nxt = last.argmax(-1)
        if stops:
            nxt = torch.where(finished, torch.full_like(nxt, eos_pad), nxt)
            finished |= torch.isin(nxt, stop_ids)
        tokens = torch.cat((tokens, nxt[:, None]), 1)
        mask = torch.cat((mask, torch.ones_like(nxt[:, None])), 1)
        step_input, step_mask = (nxt[:, None], torch.ones_like(nxt[:, None])) if cache is not None else (tokens, mask)
        if stops and bool(finished.all()):
            break
    return tokens if out_type == "tokens" else decode(model, tokens, mask, input)


__all__ = ["generate", "filter_logits", "sample_logits", "token_counts", "pad"]
