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

``top_induction=K`` (``induction_ablation``) asks whether induction heads carry the repeat: the K
heads with the highest induction score on repeated random tokens (``analyses.head_metrics.
random_repeat_scores``, the induction mosaic's score) are mean-ablated together, against
``draws`` random sets of as many heads of the same layers, and the model's next-token loss is
reported on the first half (unpredictable) and on the repeated half (predictable by copying).
Three independent sets of ``n`` repeated random sequences, drawn in this order from one
generator seeded ``seed``: the detection set that picks the heads, the reference set of the
mean, and the measured set; the heads are not chosen on the data they are judged on.

Mean ablation as Wang et al. (2022, the IOI circuit) use it, the mean over a reference
distribution of inputs like the measured ones: the head's output z is replaced, at each
position, by its mean over the reference set of fresh repeated random sequences of the same
length and framing (resample ablation, Chan et al. 2022, is ``method="resample"``). The head keeps its average, position-dependent
contribution (what it writes at the 5th token of a repeated half on average) and loses
everything that depends on this sequence's tokens, which is what copying needs. (Zero ablation
also removes the average, and knocks the residual stream off its distribution: see
tests/test_ablation.py on toy-induction.) Under grouped-query attention each query head still
has its own z, so ablating one leaves the other query heads of its key/value group untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

import models
from probe.errors import InputError
from probe.head_labels import check_top, heads_text, parse_heads

from .ablation import (
    ablate_against_random,
    ablate_together,
    head_ablation_sweep,
    logit_difference,
    next_token_loss,
    same_layer_sets,
)
from .head_metrics import random_repeat_scores, random_repeat_tokens


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
    subject: str  # whose sweep: "of MODEL" or "on N [held-out] prompts of RUN"
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
                   top: int = 5, has_output: bool = True, top_induction: int | None = None,
                   draws: int | None = None) -> AblationStudy | InductionAblation:
    """The sweep, or the set ablated together, for one source of data (see the module); with
    ``top_induction`` the top induction heads against random heads of the same layers
    (``induction_ablation``, ``draws`` random sets, default 20).
    ``has_output``: whether the caller has somewhere to put a sweep of ``task`` or ``prompts``
    (a run's sweep goes next to the run); without one, such a sweep is refused before it runs."""
    check_top(top)
    if n < 1:  # a tensor of no (or minus three) examples
        raise InputError(f"n must be at least 1 (the --task examples), not {n}")
    together_heads, together_mlp = parse_heads(ablate_heads), list(ablate_mlp or [])
    if top_induction is not None or draws is not None:
        return _top_induction(model_name, top_induction, draws, task, prompts, run, metric, together_heads,
                              together_mlp, method, n, seed)
    if run is not None and run.is_encoder_decoder:
        return _cross_attention_on_run(run, model_name, metric, together_heads, together_mlp, method)
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


def check_loss_metric(metric: str | None) -> None:
    check_metric_without_run(metric)
    if (metric or "loss") != "loss":
        raise InputError("--task induction measures next-token loss; --metric logit-diff needs --prompts JSONL "
                         "with answer and wrong fields")


def task_inputs(model, n: int, seed: int, metric: str | None = None) -> AblationInputs:
    """Repeated random tokens of the model's vocabulary (``random_repeat_tokens``): next-token
    loss on the repeated half of ``n`` sequences; the reference set (for mean and resample) is
    ``n`` more, drawn after them from the generator seeded ``seed``."""
    check_loss_metric(metric)
    g = torch.Generator().manual_seed(seed)
    tokens, reference = random_repeat_tokens(model, n, generator=g), random_repeat_tokens(model, n, generator=g)
    return AblationInputs(tokens.ids, reference.ids, next_token_loss(tokens.loss_positions()[1]),
                          f"next-token loss on the repeated half of {n} repeated random sequences "
                          f"(2 x {tokens.half} tokens)")


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


def _cross_attention_on_run(run, model_name, metric, together_heads, together_mlp, method) -> AblationStudy:
    """An encoder-decoder run: its cross-attention heads (``--ablate-heads`` names them, LxHy
    for decoder layer x) ablated during greedy decoding of the run's sources, measured by exact
    match with the run's targets (`analyses.cross_attention`); the sweep goes next to the run
    as ablation_exact_match."""
    from .cross_attention import (
        ablation_hooks,
        ablation_sweep,
        check_heads,
        mean_z,
        run_translation_set,
        translation_metrics,
    )
    from .run_inputs import run_model

    if metric not in (None, "exact-match"):
        raise InputError(f"--metric {metric} does not apply to an encoder-decoder run; its metric is exact-match "
                         "(greedy translations against the run's targets)")
    if together_mlp:
        raise InputError("--ablate-mlp is not implemented for encoder-decoder runs; ablate cross-attention heads")
    if method not in ("zero", "mean"):
        raise InputError("cross-attention heads are ablated by --method mean (the head's mean z over the run's "
                         "target positions) or zero")
    model = run_model(run, model_name)
    data = run_translation_set(run)
    what = f"exact match of greedy translations on the {run.n_prompts} prompts (cross-attention heads)"
    if together_heads:
        check_heads(model, together_heads)
        means = mean_z(model, data) if method == "mean" else None
        clean = translation_metrics(model, data)["exact_match"]
        ablated = translation_metrics(model, data, ablation_hooks(together_heads, method, means))["exact_match"]
        table = pd.DataFrame([{"method": method, "heads": heads_text(together_heads, " "), "mlp": "", "clean": clean,
                               "ablated": ablated, "effect": ablated - clean}])
        return AblationStudy(table, True, model.cfg.model_name, method, what, "")
    sweep = ablation_sweep(model, data, method)
    clean = sweep[sweep.layer == -1].iloc[0]
    table = sweep[sweep.layer >= 0].rename(columns={"exact_match": "ablated"}).reset_index(drop=True)
    table = table.assign(clean=clean.exact_match, effect=table.ablated - clean.exact_match,
                         token_accuracy_clean=clean.token_accuracy, metric="exact_match", method=method)
    return AblationStudy(table, False, model.cfg.model_name, method, what, f"on {run.path}", "ablation_exact_match")


def _on_run(run, model_name, metric, together_heads, together_mlp, heads, layer, query, method, seed,
            top) -> AblationStudy:
    from .coref import candidate_attention, coref_heads, named_heads
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
        chosen = list(named_heads(table, top))  # the study's own choice: those that beat the baselines, else the best
    setup = ablation_setup(model, run, used, layer, query, seed)
    fn, what = setup_metric(setup, metric, heads or chosen or None)
    # a decoder asked for its answer is measured on every prompt (no probe is fitted, nothing held out)
    measured = f"{len(setup.data.prompts)} {'held-out ' if setup.held_out else ''}prompts"
    inputs = AblationInputs(setup.data.tokens, setup.reference, fn, f"{what} on {measured}",
                            setup.data.mask, setup.reference_mask)
    if together_heads or together_mlp:
        return _ablate(model, inputs, method, seed, together_heads, together_mlp, "", heads_measured=chosen)
    from .coref_interventions import sweep

    table = sweep(model, setup, metric, heads or chosen or None, method)
    return AblationStudy(table, False, model.cfg.model_name, method, table.metric.iloc[0],
                         f"on {measured} of {run.path}", f"ablation_{metric.replace('-', '_')}",
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


@dataclass(frozen=True)
class InductionAblation:
    """The top induction heads mean-ablated together vs random sets of as many heads of the
    same layers, measured by next-token loss on repeated random tokens (see the module)."""

    model_name: str
    method: str
    n: int  # sequences in each of the detection, reference and measured sets
    half: int  # random tokens per half
    heads: tuple[tuple[int, int], ...]  # the ablated set: the top induction_random on the detection set
    scores: tuple[float, ...]  # their induction_random there
    table: pd.DataFrame  # analyses.ablation.ablate_against_random's rows (metrics first_half, repeated_half)
    n_sets: int  # distinct random sets of as many heads of the same layers

    def _rows(self, condition: str) -> pd.DataFrame:
        return self.table[self.table.condition == condition]

    def loss(self, condition: str, part: str = "repeated_half") -> float:
        """Loss of ``part`` (first_half, repeated_half) for clean or heads."""
        return float(self._rows(condition)[part].iloc[0])

    def effect(self, part: str = "repeated_half") -> float:
        """How much ablating ``heads`` raises the loss of ``part``."""
        return float(self._rows("heads")[f"effect_{part}"].iloc[0])

    def random_effects(self, part: str = "repeated_half") -> np.ndarray:
        """[draws] the same for each random set."""
        return self._rows("random")[f"effect_{part}"].to_numpy()

    @property
    def beats_every_draw(self) -> bool:
        """Does ablating ``heads`` raise the repeated half's loss more than every random set?"""
        return self.effect() > self.random_effects().max()

    @property
    def share_below(self) -> float:
        """The fraction of random sets whose repeated-half effect is below the heads': the
        heads' percentile among the draws."""
        return float((self.random_effects() < self.effect()).mean())


def induction_ablation(model, k: int = 5, draws: int = 20, n: int = 16, half: int = 20, seed: int = 0,
                       method: str = "mean") -> InductionAblation:
    """The ``k`` heads with the highest ``induction_random`` on the detection set ablated
    together vs ``draws`` random sets of as many heads of the same layers; next-token loss on
    each half of the measured set (see the module). ``model``: a model or its name."""
    model = models.load(model) if isinstance(model, str) else model
    if not model.cfg.has_unembed:
        raise encoder_refusal(model.cfg.model_name)
    check_top(k)
    if n < 1:
        raise InputError(f"n must be at least 1 (sequences per set), not {n}")
    g = torch.Generator().manual_seed(seed)
    detect, reference, data = (random_repeat_tokens(model, n, half, generator=g) for _ in range(3))
    scores = random_repeat_scores(model, data=detect)["induction_random"]
    if k >= scores.size:
        raise InputError(f"{k} top induction heads leave no other heads to compare with: {model.cfg.model_name} "
                         f"has {scores.size} heads")
    order = np.argsort(-scores, axis=None, kind="stable")[:k]
    heads = [(int(i // scores.shape[1]), int(i % scores.shape[1])) for i in order]
    first, repeated = data.loss_positions()
    metrics = {"first_half": next_token_loss(first), "repeated_half": next_token_loss(repeated)}
    table = ablate_against_random(model, data.ids, metrics, heads, draws, method, reference.ids, seed)
    return InductionAblation(model.cfg.model_name, method, n, data.half, tuple(heads),
                             tuple(float(scores[layer, h]) for layer, h in heads), table,
                             same_layer_sets(heads, model.cfg.n_heads))


def _top_induction(model_name, top_induction, draws, task, prompts, run, metric, together_heads, together_mlp,
                   method, n, seed) -> InductionAblation:
    if top_induction is None:
        raise InputError("--draws compares the top induction heads with random heads of the same layers; give "
                         "--top-induction K")
    if run is not None or prompts or (task not in (None, "induction")):
        raise InputError("--top-induction measures repeated random tokens (--task induction); it takes no --run "
                         "or --prompts")
    if together_heads or together_mlp:
        raise InputError("--top-induction picks the heads to ablate; give it or --ablate-heads/--ablate-mlp")
    if not model_name:
        raise InputError("give --model for --top-induction")
    check_loss_metric(metric)
    return induction_ablation(model_name, top_induction, 20 if draws is None else draws, n, seed=seed,
                              method=method)


def render_induction_ablation(study: InductionAblation) -> str:
    """The comparison in a few lines: the heads, the losses clean and ablated on each half,
    the random sets' mean, spread and range, and where the heads fall among them."""
    def stats(part: str) -> str:
        e = study.random_effects(part)
        return f"{e.mean():+.3f} +- {e.std(ddof=1) if len(e) > 1 else 0.0:.3f} (min {e.min():+.3f}, max {e.max():+.3f})"

    draws = len(study.random_effects())
    k = len(study.heads)
    which = "the top induction head" if k == 1 else f"the {k} top induction heads"
    lines = [
        f"{study.method}-ablating {which} of {study.model_name}{' together' if k > 1 else ''} vs {draws} random "
        "sets of as many heads of the same layers",
        f"  heads (induction score on {study.n} other repeated random sequences): "
        + ", ".join(f"{heads_text([h])} {s:.2f}" for h, s in zip(study.heads, study.scores)),
        f"  next-token loss (nats) on {study.n} sequences of 2 x {study.half} random tokens:",
        f"    {'':<22}{'first half':>12}{'repeated half':>16}",
        f"    {'clean':<22}{study.loss('clean', 'first_half'):>12.3f}{study.loss('clean'):>16.3f}",
        f"    {'top induction heads':<22}{study.loss('heads', 'first_half'):>12.3f}{study.loss('heads'):>16.3f}"
        f"   effect {study.effect('first_half'):+.3f} / {study.effect():+.3f}",
        f"  random heads, effect mean +- sd over {draws} draws:",
        f"    first half    {stats('first_half')}",
        f"    repeated half {stats('repeated_half')}",
    ]
    few = f" (only {study.n_sets} distinct random sets exist)" if study.n_sets < draws else ""
    subject = "the top head raises" if k == 1 else "the top heads raise"
    if study.beats_every_draw:
        lines.append(f"  {subject} the repeated half's loss more than all {draws} random sets{few}")
    else:
        lines.append(f"  {subject} the repeated half's loss more than {study.share_below:.0%} of the {draws} random "
                     f"sets, not all{few}")
    return "\n".join(lines)
