"""Activation patching as `probe patch` asks for it.

- Text pairs (``pairs_from_texts``: clean and corrupted prompts of one token length, each with
  a one-token answer and wrong answer) or the toy coreference model's tired/wide twins, measured
  by the logit difference: `text_patching` patches the residual stream per [layer, position]
  and every head's output.
- A recorded run's twin prompts (same ``pair_id``, flipped antecedent): `run_patching`, measured
  by the model's own answer or an antecedent probe, so it works on encoders too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from probe.errors import InputError

from .ablation import logit_difference
from .patching import patch_heads, patch_residual
from .run_inputs import stack_equal_length

PAIR_FIELDS = ("clean", "corrupt", "answer", "wrong")


@dataclass(frozen=True)
class PatchInputs:
    clean: torch.Tensor  # [b, p]
    corrupt: torch.Tensor  # [b, p], the same length as clean
    answer: torch.Tensor  # [b] the clean prompt's next token
    wrong: torch.Tensor  # [b] the corrupted prompt's next token
    what: str


@dataclass(frozen=True)
class TextPatching:
    resid: pd.DataFrame  # [layer, position] rows, with the position's token
    heads: pd.DataFrame  # [layer, head] rows
    tokens: list[str]  # the first clean prompt's tokens
    what: str


@dataclass(frozen=True)
class RunPatching:
    heads: pd.DataFrame
    resid: pd.DataFrame
    names: tuple[str, str]  # the results' names next to the run (heads, resid)


def require_answer_logit(model) -> None:
    """Refuse a model without an LM head: text pairs are measured by an answer's logit."""
    if not model.cfg.has_unembed:
        raise InputError(f"{model.cfg.model_name} is an encoder without an LM head, so there is no answer logit to "
                         "patch; `probe coref RUN` patches encoder twins measured by an antecedent probe")


def pairs_from_texts(model, rows: Sequence[dict], what: str = "") -> PatchInputs:
    """Token ids of clean/corrupted texts with the answer and wrong-answer token ids."""
    require_answer_logit(model)
    if not rows:
        raise InputError("no pairs to patch")
    ids = stack_equal_length([model.tokenize(r[k]).ids[0] for k in ("clean", "corrupt") for r in rows],
                             "patching swaps activations position by position, so every clean and corrupted prompt "
                             "must have the same token length; these have {lengths} tokens")
    answer = torch.tensor([model.to_single_token(r["answer"]) for r in rows])
    wrong = torch.tensor([model.to_single_token(r["wrong"]) for r in rows])
    return PatchInputs(ids[:len(rows)], ids[len(rows):], answer, wrong, what or f"{len(rows)} pair(s)")


def patch_inputs(model, *, pairs: str | None = None, clean_text: str | None = None, corrupt_text: str | None = None,
                 answer: str | None = None, wrong: str | None = None, clean: str = "tired",
                 corrupt: str = "wide") -> PatchInputs:
    """What to patch: the pairs of a JSONL file (``pairs``), one pair of texts (``clean_text``
    with ``corrupt_text``, ``answer``, ``wrong``), or else the toy coreference model's twins."""
    from probe.prompts import read_jsonl_records

    if not (pairs or clean_text):
        if model.cfg.model_name != "toy-coref":
            raise InputError("without --clean-text/--pairs, probe patch builds the toy coreference task's twins, "
                             "which need --model toy-coref")
        return toy_twin_inputs(clean, corrupt)
    require_answer_logit(model)  # before reading any file
    if pairs:
        return pairs_from_texts(model, read_jsonl_records(pairs, PAIR_FIELDS))
    if not (corrupt_text and answer and wrong):
        raise InputError("give --clean-text, --corrupt-text, --answer and --wrong together (or --pairs FILE)")
    return pairs_from_texts(model, [{"clean": clean_text, "corrupt": corrupt_text, "answer": answer, "wrong": wrong}])


def toy_twin_inputs(clean: str = "tired", corrupt: str = "wide") -> PatchInputs:
    """The toy coreference task's twins that differ only in the adjective."""
    from models.tasks.coref import adjective_twins

    c, w, answer, wrong = adjective_twins(clean, corrupt)
    return PatchInputs(c, w, answer, wrong, f"{len(c)} pairs '{clean}' vs '{corrupt}'")


def text_patching(model, inputs: PatchInputs, direction: str = "denoise") -> TextPatching:
    """Residual-stream and per-head patching measured by the logit difference answer - wrong."""
    metric = logit_difference(inputs.answer, inputs.wrong)
    resid = patch_residual(model, inputs.clean, inputs.corrupt, metric, direction=direction)
    heads = patch_heads(model, inputs.clean, inputs.corrupt, metric, direction=direction)
    tokens = model.to_str_tokens(inputs.clean[0])
    resid["token"] = [tokens[p] for p in resid.position]
    return TextPatching(resid, heads, tokens, inputs.what)


def run_patching(model, run, layer: int | None = None, query: str = "pronoun_span",
                 direction: str = "denoise") -> RunPatching:
    """Patching on the twin prompts of a run with gold antecedents, measured by the model's
    answer or, without one, an antecedent probe at ``layer`` (default: the last)."""
    from .coref import candidate_attention
    from .coref_interventions import fit_antecedent_probe, patching_tests, twin_pairs
    from .run_checks import check_model_matches

    check_model_matches(model, run)
    _, _, used = candidate_attention(run, query=query)
    pairs = twin_pairs(run, used)
    if not pairs:
        raise InputError(f"{run.path} has no twin prompts (same pair_id, different antecedent, same token length); "
                         "record the bundled seed set or toy-coref-test")
    layer = layer if layer is not None else run.config["n_layers"] - 1
    hook = f"blocks.{layer}.hook_resid_post"
    if hook not in run.hooks and not model.cfg.has_unembed:
        raise InputError(f"{run.path} lacks {hook}, which the antecedent probe reads; record 'blocks.*.hook_resid_post'")
    probe = fit_antecedent_probe(run, used, layer, query) if hook in run.hooks else None
    heads, resid = patching_tests(model, run, pairs, probe, query, direction)
    # noising reads the other way (1 = no damage), so it never overwrites the denoising tables
    suffix = "" if direction == "denoise" else "_noise"
    return RunPatching(heads, resid, (f"patch_heads_antecedent{suffix}", f"patch_resid_antecedent{suffix}"))
