"""Decoding an encoder-decoder model: greedy, sampling and beam search, with the decoder's
self-attention keys and values cached step by step and the cross-attention keys and values of
the source computed once. Hooks fire at every step (with the cache, a step's hooks see only the
new target position; the encoder's and the cross-attention keys' hooks fire once).

Defaults follow `transformers`' ``generate`` for translation models rather than TransformerLens's
decoder-only ``generate``: greedy unless ``do_sample=True``, one beam, finished rows padded with
the pad token. Beam search is transformers' (>= 4.50) algorithm, step for step: the top
2 x num_beams continuations of all beams, the best num_beams that did not just end carry on, a
hypothesis that ends (EOS, or the length limit) among the top num_beams is scored by its summed
log-probability / (generated length ^ length_penalty) and kept if among the num_beams best;
``early_stopping`` True stops once num_beams hypotheses are done, False when no running beam
can beat the worst kept one at the current length, "never" with the best length it could reach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from probe.errors import InputError

from .generation import _steps, sample_logits

if TYPE_CHECKING:
    from .encoder_decoder import HookedEncoderDecoder

NEG = -1.0e9  # transformers' "impossible" score in beam search


def generate(model: HookedEncoderDecoder, input: Any, max_new_tokens: int = 20, *,
             attention_mask: torch.Tensor | None = None, do_sample: bool = False, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: bool | Literal["never"] = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | None = None, stop_at_eos: bool = True, use_kv_cache: bool = True,
             seed: int | None = None, return_type: Literal["input", "str", "tokens"] = "input",
             verbose: bool = False) -> Any:
    """Decode ``input`` (source text, a list of texts, or ids [b, s] with ``attention_mask``) for
    up to ``max_new_tokens`` tokens. Returns ids [b, 1 + new] from the decoder start token (as
    transformers), or strings ("input" answers text with text)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise InputError(f"num_beams must be a positive integer, not {num_beams!r}")
    if early_stopping not in (True, False, "never"):
        raise InputError(f"early_stopping must be true, false or 'never', not {early_stopping!r}")
    if not do_sample and (top_k is not None or top_p is not None or temperature != 1.0):
        raise InputError("temperature, top_k and top_p apply to sampling; pass do_sample=True")
    if do_sample and num_beams > 1:
        raise InputError("beam search here is deterministic; pass do_sample=False with num_beams > 1")
    source, source_valid = model._ids(input, attention_mask, "source")
    eos = eos_token_id if eos_token_id is not None else model.cfg.eos_token_id
    eos = eos if stop_at_eos else None
    pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else (eos if eos is not None else 0)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if num_beams == 1:
        tokens = _one_path(model, source, source_valid, max_new_tokens, do_sample, temperature, top_k, top_p,
                           eos, pad, use_kv_cache, generator, verbose)
    else:
        tokens = _beam_search(model, source, source_valid, max_new_tokens, num_beams, length_penalty, early_stopping,
                              eos, pad, use_kv_cache, verbose)
    if return_type == "tokens" or (return_type == "input" and isinstance(input, torch.Tensor)):
        return tokens
    if return_type not in ("input", "str", "tokens"):
        raise InputError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}")
    texts = model.to_string(tokens)
    return texts[0] if isinstance(input, str) else texts


class _Stepper:
    """The next-token log-probabilities of running target rows, with or without the cache."""

    def __init__(self, model: HookedEncoderDecoder, source: torch.Tensor, source_valid: torch.Tensor | None,
                 use_cache: bool):
        self.model = model
        self.cache = model.new_cache(source, source_valid)
        self.use_cache = use_cache

    def logits(self, targets: torch.Tensor) -> torch.Tensor:  # targets [rows, t] -> [rows, vocab]
        c = self.cache
        if self.use_cache:
            x = self.model.decode(targets[:, -1:], c.encoder_out, c.source_valid, cache=c)
        else:
            x = self.model.decode(targets, c.encoder_out, c.source_valid)
        return self.model.logits_from(x[:, -1]).float()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.reorder(rows)


def _one_path(model, source, source_valid, max_new, do_sample, temperature, top_k, top_p, eos, pad, use_cache,
              generator, verbose) -> torch.Tensor:
    """Greedy or sampled decoding, one hypothesis per source."""
    step = _Stepper(model, source, source_valid, use_cache)
    tokens = torch.full((source.shape[0], 1), model.decoder_start_id(), dtype=torch.long, device=source.device)
    done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    for _ in _steps(max_new, verbose):
        logits = step.logits(tokens)
        if do_sample:
            nxt = sample_logits(logits, top_k, top_p, temperature, generator=generator)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if eos is not None:
            done = done | (nxt == eos)
            if bool(done.all()):
                break
    return tokens


def _beam_search(model, source, source_valid, max_new, beams, length_penalty, early_stopping, eos, pad, use_cache,
                 verbose) -> torch.Tensor:
    b, device = source.shape[0], source.device
    keep = 2 * beams  # candidates per step: enough that num_beams survive even if num_beams just ended
    max_len = 1 + max_new
    rows = torch.arange(b, device=device).repeat_interleave(beams)  # each source once per beam
    step = _Stepper(model, source[rows], source_valid[rows] if source_valid is not None else None, use_cache)
    running = torch.full((b, beams, max_len), pad, dtype=torch.long, device=device)
    running[:, :, 0] = model.decoder_start_id()
    running_scores = torch.zeros(b, beams, device=device)
    running_scores[:, 1:] = NEG  # all beams start equal: let only the first expand at step one
    done_seqs = running.clone()
    done_scores = torch.full((b, beams), NEG, device=device)
    done_flags = torch.zeros(b, beams, dtype=torch.bool, device=device)
    done_lens = torch.ones(b, beams, dtype=torch.long, device=device)
    may_improve = torch.ones(b, 1, dtype=torch.bool, device=device)
    top_beams = torch.arange(keep, device=device) < beams
    cur = 1
    for _ in _steps(max_new, verbose):
        logp = step.logits(running[:, :, :cur].reshape(b * beams, cur)).log_softmax(-1)
        vocab = logp.shape[-1]
        scores = (logp.view(b, beams, vocab) + running_scores[:, :, None]).view(b, beams * vocab)
        cand_scores, cand = scores.topk(keep, dim=-1)  # [b, keep]
        parent, token = cand // vocab, cand % vocab
        cand_seqs = running.gather(1, parent[:, :, None].expand(-1, -1, max_len)).clone()
        cand_seqs[:, :, cur] = token
        ended = torch.full_like(token, cur + 1 >= max_len, dtype=torch.bool)
        if eos is not None:
            ended = ended | (token == eos)
        # the best candidates that did not end carry on
        alive_scores = cand_scores + ended.float() * NEG
        carry = alive_scores.topk(beams, dim=-1).indices  # [b, beams]
        new_parent = parent.gather(1, carry)
        running = cand_seqs.gather(1, carry[:, :, None].expand(-1, -1, max_len))
        running_scores = alive_scores.gather(1, carry)
        # hypotheses that ended among the top num_beams join the finished ones if good enough
        just_done = ended & top_beams[None, :]
        final = cand_scores / (cur ** length_penalty)  # cur tokens generated, EOS included
        full = done_flags.all(-1, keepdim=True) & (early_stopping is True)
        final = final + full.float() * NEG + (~may_improve).float() * NEG + (~just_done).float() * NEG
        merged = torch.cat([done_scores, final], dim=1)
        best = merged.topk(beams, dim=-1).indices
        done_seqs = torch.cat([done_seqs, cand_seqs], dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))
        done_scores = merged.gather(1, best)
        done_flags = torch.cat([done_flags, just_done], dim=1).gather(1, best)
        done_lens = torch.cat([done_lens, torch.full_like(token, cur + 1)], dim=1).gather(1, best)
        cur += 1
        # reorder the caches to the surviving beams' parents (flat rows of the [b * beams] batch)
        step.keep((new_parent + torch.arange(b, device=device)[:, None] * beams).reshape(-1))
        # can a running beam still beat the worst finished one?
        length = (max_len - 1) if (early_stopping == "never" and length_penalty > 0) else (cur - 1)
        best_running = running_scores[:, :1] / (length ** length_penalty)
        worst_done = torch.where(done_flags, done_scores.min(dim=1, keepdim=True).values, done_scores.new_tensor(NEG))
        may_improve = may_improve & (best_running > worst_done).any(-1, keepdim=True)
        open_beams = not (bool(done_flags.all()) and early_stopping is True)
        if not (bool(may_improve.any()) and open_beams and not bool(ended.all())):
            break
    out = done_seqs[:, 0]  # the best hypothesis of each source
    return out[:, : int(done_lens[:, 0].max())]
