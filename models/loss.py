"""Next-token cross-entropy: the one home of the language-model loss, used by the forward
pass (``return_type="loss"``), the ablation metrics and the toy tasks' evaluations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[b, p-1] negative log-likelihood of token t+1 given the logits at t (in float32)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [b, p-1, vocab]
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is a real token."""
    nll = next_token_nll(logits, tokens)
    if key_valid is None:
        return nll.mean()
    valid = (key_valid[:, -tokens.shape[1]:][:, 1:] & key_valid[:, -tokens.shape[1]:][:, :-1]).float()
    return (nll * valid).sum() / valid.sum().clamp(min=1)
