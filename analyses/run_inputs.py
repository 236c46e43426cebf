"""What an intervention on a recorded run feeds the model: the run's own model, and the run's
prompts as one right-padded batch of their stored token ids."""

from __future__ import annotations

import torch

import models
from models.tokens import Tokens, pad, pad_id
from probe.errors import CheckpointMismatch, InputError, ModelNotFound, UnsupportedArchitecture

# What a model that cannot be loaded raises: a name not found, a family we cannot build,
# weights that do not fit, a checkpoint file missing or unreadable.
LOAD_ERRORS = (ModelNotFound, UnsupportedArchitecture, CheckpointMismatch, OSError)


def run_model(run, name: str | None = None) -> models.HookedTransformer:
    """The model ``name``, or by default the one ``run`` was recorded with."""
    return models.load(name or run.model_name)


def load_run_model(run, name: str | None = None, fallback: tuple[type[Exception], ...] = LOAD_ERRORS
                   ) -> tuple[models.HookedTransformer | None, Exception | None]:
    """(the model, None) for ``name`` (default: the one ``run`` was recorded with); when the
    run's own model cannot be loaded for one of the ``fallback`` reasons, (None, the reason),
    and the caller goes on without it. A model the user named must load: its error propagates."""
    try:
        return run_model(run, name), None
    except fallback as e:
        if name:  # asked for explicitly: a mistake to report
            raise
        return None, e


def run_batch(run, model: models.HookedTransformer, prompts: list[int] | None = None) -> Tokens:
    """The stored token ids of ``prompts`` (default: all) as a [b, p] batch right-padded with
    the model's pad id, with its attention mask."""
    prompts = list(range(run.n_prompts)) if prompts is None else prompts
    return pad([run.tokens(i).tolist() for i in prompts], pad_id(model.tokenizer, model.cfg), "right")


def stack_equal_length(rows: list[torch.Tensor], refusal: str) -> torch.Tensor:
    """[b, p] from token rows that must all have one length (positions are compared across
    rows); refuses rows of different lengths with ``refusal``, whose ``{lengths}`` names them."""
    lengths = sorted({len(r) for r in rows})
    if len(lengths) != 1:
        raise InputError(refusal.format(lengths=lengths))
    return torch.stack(rows)
