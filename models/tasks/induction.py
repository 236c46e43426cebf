"""Induction: sequences of random tokens whose second half repeats the first.

Ground truth (Olsson et al. 2022, "In-context learning and induction heads"): a 2-layer
attention-only transformer solves the repeated half with a previous-token head in layer 0
and an induction head in layer 1 that attends from a token to the token after its earlier
occurrence. Only the repeated half is predictable; the first half is uniform noise.
"""

from __future__ import annotations

import math

import torch

from ..config import TransformerConfig
from ..loss import next_token_nll
from . import SPECIALS

NAME = "induction"
DESCRIPTION = "2-layer attention-only model on random tokens whose second half repeats the first"
N_RANDOM = 48  # random-token vocabulary
HALF = 20  # tokens per half; a sequence is <bos> + 2 * HALF tokens
training_defaults = {"steps": 6000, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "warmup": 100}


def vocabulary() -> list[str]:
    return SPECIALS + [f"t{i}" for i in range(N_RANDOM)]


def model_config(vocab_size: int) -> TransformerConfig:
    return TransformerConfig(
        d_model=64, n_layers=2, n_heads=4, d_vocab=vocab_size, n_ctx=2 * HALF + 1, attn_only=True,
        causal=True, positional="learned", norm="layernorm", final_norm=True, tie_embeddings=False,
        bos_token_id=SPECIALS.index("<bos>"), pad_token_id=SPECIALS.index("<pad>"), default_prepend_bos=True,
        model_name="toy-induction", family="toy",
    )


def repeated_tokens(generator: torch.Generator, batch_size: int, half: int = HALF) -> torch.Tensor:
    """[batch, 1 + 2 * half]: <bos>, then ``half`` random tokens, then the same again."""
    first = torch.randint(len(SPECIALS), len(SPECIALS) + N_RANDOM, (batch_size, half), generator=generator)
    bos = torch.full((batch_size, 1), SPECIALS.index("<bos>"))
    return torch.cat([bos, first, first], dim=1)


def repeated_positions(half: int = HALF) -> tuple[slice, slice]:
    """Positions (of the sequence) whose next token is random (first half) and predictable
    (repeated half), as slices of the [p-1] next-token loss."""
    return slice(0, half), slice(half + 1, 2 * half)


def sample_batch(generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, None, torch.Tensor]:
    """Training data: a random segment of random length (2..HALF) at a random place,
    repeated right after itself, inside random tokens. The varying offset means only an
    induction mechanism (not a fixed positional copy) predicts the repeat."""
    n = 2 * HALF
    tokens = torch.randint(len(SPECIALS), len(SPECIALS) + N_RANDOM, (batch_size, n), generator=generator)
    lengths = torch.randint(2, HALF + 1, (batch_size,), generator=generator)
    for row in range(batch_size):
        length = int(lengths[row])
        start = int(torch.randint(0, n - 2 * length + 1, (1,), generator=generator))
        tokens[row, start + length:start + 2 * length] = tokens[row, start:start + length]
    ids = torch.cat([torch.full((batch_size, 1), SPECIALS.index("<bos>")), tokens], dim=1)
    return ids, None, torch.ones(batch_size, n, dtype=torch.bool)


@torch.no_grad()
def per_position_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """[batch, p-1] next-token cross-entropy."""
    return next_token_nll(model(ids), ids)


def evaluate(model, n: int = 256, seed: int = 12345) -> dict[str, float]:
    ids = repeated_tokens(torch.Generator().manual_seed(seed), n)
    loss = per_position_loss(model, ids)
    first, repeat = repeated_positions()
    return {"loss_first_half": float(loss[:, first].mean()), "loss_repeated_half": float(loss[:, repeat].mean()),
            "uniform_loss": math.log(N_RANDOM)}
