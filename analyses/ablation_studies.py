"""Ablation as `probe ablate` asks for it: which data, which metric, a sweep or a set.

Three sources of data, each with the metrics it can measure:
- ``task="induction"``: repeated random tokens, next-token loss on the repeated half;
- ``prompts``: equal-length prompts, next-token loss or (JSONL with one-token ``answer`` and
  ``wrong`` fields) the logit difference at the last token;
- ``run``: a recorded run. With gold antecedents: the study's held-out prompts, measured by
  the model's own answer or an antecedent probe (``accuracy``) or by the named heads'
  attention (``antecedent-score``); a decoder run without them (or ``metric="loss"``):
  next-token loss on all its prompts, right-padded with a mask.
Either every head is ablated in turn (the sweep, a [layer, head] table) or ``ablate_heads`` /
``ablate_mlp`` are ablated together (one row: clean vs ablated).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

import models
from probe.errors import InputError
from probe.head_labels import check_top, parse_heads

from .ablation import ablate_together, head_ablation_sweep, logit_difference, next_token_loss


@dataclass(frozen=True)
class AblationInputs:
    tokens: torch.Tensor  # [b, p] inputs
    reference: torch.Tensor  # [b', p] where mean/resample replacements come from
    metric: object  # analyses.ablation.Metric
    what: str  # the metric on what data, for a one-line summary
    mask: torch.Tensor | None = None  # [b, p] 1 for real tokens, when inputs are right-padded
    reference_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class AblationStudy:
    table: pd.DataFrame  # the sweep ([layer, head] rows) or one row (the set ablated together)
    together: bool  # True: ablate_heads/ablate_mlp ablated together; False: the per-head sweep
    model_name: str
    method: str
    what: str  # the metric on what data
    subject: str  # whose sweep: "of MODEL" or "on N held-out prompts of RUN"
    result_name: str | None = None  # for a sweep on a run: its name next to the run
    heads_measured: tuple[tuple[int, int], ...] = ()  # antecedent-score heads chosen from the study


def encoder_refusal(name: str, why: str = "") -> InputError:
    return InputError(f"{name} is an encoder without an LM head, so next-token loss does not apply{why}; use "
                      "--run RUN --metric accuracy|antecedent-score on a run with gold antecedents (a probe or the "
                      "heads' attention measures the effect)")


def ablation_study(model_name: str | None = None, *, task: str | None = None, prompts: str | None = None,
                   run=None, metric: str | None = None, ablate_heads: list[str] | None = None,
                   ablate_mlp: list[int] | None = None, heads: list[str] | None = None, layer: int | None = None,
                   query: str = "pronoun_span", method: str = "mean", n: int = 64, seed: int = 0,
                   top: int = 5, has_output: bool = True) -> AblationStudy:
    """The sweep, or the set ablated together, for one source of data (see the module).
    ``has_output``: whether the caller has somewhere to put a sweep of ``task`` or ``prompts``
    (a run's sweep goes next to the run); without one, such a sweep is refused before it runs."""
    check_top(top)
    if n < 1:  # a tensor of no (or minus three) examples
        raise InputError(f"n must be at least 1 (the --task examples), not {n}")
    together_heads, together_mlp = parse_heads(ablate_heads), list(ablate_mlp or [])
    if run is not None:
        return _on_run(run, model_name, metric, together_heads, together_mlp, parse_heads(heads), layer, query,
                       method, seed, top)
    if not model_name:
        raise InputError("give --model (with --task or --prompts), or --run RUN for the coreference metrics")
    model = models.load(model_name)
    if not model.cfg.has_unembed:
        raise encoder_refusal(model_name)
    inputs = task_inputs(model, n, seed, metric) if task == "induction" else prompt_inputs(model, prompts, metric)
    if not (together_heads or together_mlp or has_output):
        raise InputError("give -o FILE.csv for the sweep's table (or --ablate-heads/--ablate-mlp to ablate a set)")
    return _ablate(model, inputs, method, seed, together_heads, together_mlp, f"of {model_name}")


def _ablate(model, inputs: AblationInputs, method: str, seed: int, together_heads, together_mlp, subject: str,
            result_name: str | None = None, heads_measured=(), metric_label: str | None = None) -> AblationStudy:
    """Ablate the set together when one is given, else sweep every head."""
    name = model.cfg.model_name
    if together_heads or together_mlp:
        table = ablate_together(model, inputs.tokens, inputs.metric, together_heads, together_mlp, method,
                                inputs.reference, seed, inputs.mask, inputs.reference_mask)
        return AblationStudy(table, True, name, method, inputs.what, subject, None, tuple(heads_measured))
    table = head_ablation_sweep(model, inputs.tokens, inputs.metric, method, inputs.reference, seed,
                                attention_mask=inputs.mask, reference_mask=inputs.reference_mask)
    if metric_label:
        table = table.assign(metric=metric_label)
    return AblationStudy(table, False, name, method, inputs.what, subject, result_name, tuple(heads_measured))


def check_metric_without_run(metric: str | None) -> None:
    """Without a run there are no gold antecedents: only the loss and the logit difference."""
    if (metric or "loss") not in ("loss", "logit-diff"):
        raise InputError(f"--metric {metric} needs --run RUN (a run with gold antecedents); with --task or "
                         "--prompts use --metric loss or logit-diff")


def task_inputs(model, n: int, seed: int, metric: str | None = None) -> AblationInputs:
    """Repeated random tokens: next-token loss on the repeated half of ``n`` sequences."""
    from models.tasks import induction

    check_metric_without_run(metric)
    if (metric or "loss") != "loss":
        raise InputError("--task induction measures next-token loss; --metric logit-diff needs --prompts JSONL "
                         "with answer and wrong fields")
    g = torch.Generator().manual_seed(seed)
    tokens, reference = induction.repeated_tokens(g, n), induction.repeated_tokens(g, n)
    return AblationInputs(tokens, reference, next_token_loss(induction.repeated_positions()[1]),
                          f"next-token loss on the repeated half of {n} repeated random sequences")


def prompt_inputs(model, source: str | None, metric: str | None = None) -> AblationInputs:
    """Equal-length prompts: next-token loss, or the logit difference answer - wrong."""
    from probe.prompts import load_prompts

    from .run_inputs import stack_equal_length

    check_metric_without_run(metric)
    metric = metric or "loss"
    if not source:
        raise InputError("give --prompts (equal-length texts) or --task induction")
    prompts = load_prompts(source)
    tokens = stack_equal_length([model.tokenize(p.text).ids[0] for p in prompts],
                                "ablation compares positions across prompts: give prompts of equal token length "
                                "(these have {lengths} tokens)")
    if metric == "loss":
        return AblationInputs(tokens, tokens, next_token_loss(), f"next-token loss on {len(prompts)} prompts")
    for k, p in enumerate(prompts, 1):
        if "answer" not in p.labels or "wrong" not in p.labels:
            raise InputError(f"{source}: prompt {k} lacks the answer/wrong fields --metric logit-diff needs; "
                             'write JSONL lines like {"text": "...", "answer": " Mary", "wrong": " John"}')
    answer = torch.tensor([model.to_single_token(str(p.labels["answer"])) for p in prompts])
    wrong = torch.tensor([model.to_single_token(str(p.labels["wrong"])) for p in prompts])
    return AblationInputs(tokens, tokens, logit_difference(answer, wrong),
                          f"logit difference answer - wrong on {len(prompts)} prompts")


def has_coref_labels(run, query: str) -> bool:
    """Whether some prompt of ``run`` carries gold antecedents for ``query``."""
    from .coref import REQUIRED

    return any(all(k in labels for k in (*REQUIRED, query)) for labels in map(run.labels, range(run.n_prompts)))


def _on_run(run, model_name, metric, together_heads, together_mlp, heads, layer, query, method, seed,
            top) -> AblationStudy:
    from .coref import candidate_attention, coref_heads
    from .coref_interventions import ablation_setup, setup_metric
    from .run_inputs import run_model

    model = run_model(run, model_name)
    if metric == "logit-diff":
        raise InputError("--metric logit-diff takes --prompts JSONL with answer and wrong fields; on a run use "
                         "accuracy (the model's own answer, runs with gold antecedents) or loss")
    labelled = has_coref_labels(run, query)
    if metric in ("accuracy", "antecedent-score") and not labelled:
        raise InputError(f"--metric {metric} measures the antecedent, and the prompts of {run.path} have no gold "
                         f"antecedents ({query!r}, candidate_spans, answer); record seed, winobias, winogender or "
                         "toy-coref-test, or use --metric loss on a decoder run")
    if metric == "loss" or not labelled:
        return _run_loss(model, run, method, seed, together_heads, together_mlp, labelled)
    if method == "resample":
        raise InputError("resample ablation needs prompts of one length; on a run use --method mean or zero")
    metric = metric or "accuracy"
    _, _, used = candidate_attention(run, query=query)
    layer = layer if layer is not None else run.config["n_layers"] - 1
    chosen: list[tuple[int, int]] = []
    if metric == "antecedent-score" and not heads:
        table, _, _ = coref_heads(run, query=query)
        best = table[table.beats_positional] if table.beats_positional.any() else table
        chosen = [(int(r.layer), int(r["head"])) for _, r in best.sort_values("accuracy", ascending=False)
                  .head(top).iterrows()]
    setup = ablation_setup(model, run, used, layer, query, seed)
    fn, what = setup_metric(setup, metric, heads or chosen or None)
    n_held_out = len(setup.data.prompts)
    inputs = AblationInputs(setup.data.tokens, setup.reference, fn, f"{what} on {n_held_out} held-out prompts",
                            setup.data.mask, setup.reference_mask)
    if together_heads or together_mlp:
        return _ablate(model, inputs, method, seed, together_heads, together_mlp, "", heads_measured=chosen)
    from .coref_interventions import sweep

    table = sweep(model, setup, metric, heads or chosen or None, method)
    return AblationStudy(table, False, model.cfg.model_name, method, table.metric.iloc[0],
                         f"on {n_held_out} held-out prompts of {run.path}", f"ablation_{metric.replace('-', '_')}",
                         tuple(chosen))


def _run_loss(model, run, method: str, seed: int, together_heads, together_mlp, labelled: bool) -> AblationStudy:
    """Next-token loss on all of a decoder run's prompts (its stored token ids, right-padded
    with a mask when lengths differ); the sweep's name next to the run is ablation_loss."""
    from .run_checks import check_model_matches
    from .run_inputs import run_batch

    if not model.cfg.has_unembed:
        raise encoder_refusal(model.cfg.model_name, "" if labelled else f" ({run.path} has no gold antecedents either)")
    check_model_matches(model, run)
    tok = run_batch(run, model)
    lengths = sorted(set(tok.attention_mask.sum(1).tolist()))
    mask = None if len(lengths) == 1 else tok.attention_mask
    if mask is not None and method == "resample":
        raise InputError(f"resample ablation swaps activations position by position, but the prompts of {run.path} "
                         f"have {lengths[0]}-{lengths[-1]} tokens; use --method mean or zero")
    inputs = AblationInputs(tok.ids, tok.ids, next_token_loss(attention_mask=mask),
                            f"next-token loss on the {run.n_prompts} prompts of {run.path}", mask, mask)
    return _ablate(model, inputs, method, seed, together_heads, together_mlp, f"of {model.cfg.model_name}",
                   "ablation_loss", metric_label="next-token loss")
