"""Do the coreference heads matter? The causal half of the coreference study.

Attention from the pronoun to its antecedent is a correlation; these tests intervene:

- the measuring device is the model's own answer where it gives one (a decoder with an LM
  head on prompts that end in a question, ``question_span``, with one-token candidates, as
  toy-coref's: which candidate gets the higher logit at the last token); otherwise a probe
  for the antecedent (``analyses.probes``, from the pronoun's representation at the best
  layer, fitted on the train prompts), so the tests work on an encoder without an LM head
  (MiniLM) too;
- ablation: the study's heads mean-ablated together vs as many random other heads (several
  draws), and the per-head sweep on held-out prompts (probe accuracy; and the antecedent
  attention score of the study's heads, i.e. which earlier heads feed them);
- patching: for prompt pairs of the run that share a ``pair_id`` but not the antecedent (the
  tired/wide twins), each head's output and each [layer, position] of the residual stream is
  patched from the clean into the corrupted prompt (denoising, the default) or the other way
  (noising), measured by the logit (or
  probe log-odds) difference between the clean antecedent and the other candidate,
  normalised (patched - corrupt) / (clean - corrupt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer
from probe.errors import InputError
from probe.head_labels import head_label
from probe.prompts import twin_groups

from .ablation import (
    ablate_heads_hooks,
    antecedent_score,
    evaluate,
    head_ablation_sweep,
    probe_accuracy,
    probe_margin,
    reference_z,
)
from .coref import coref_labels
from .patching import Direction, patch_heads, patch_residual
from .probe_features import span_features, split_groups
from .probes import LinearProbe, split_units
from .run_checks import check_model_matches
from .run_inputs import run_batch


@dataclass
class CorefBatch:
    """Padded token ids of some of the run's prompts with the study's labels as tensors."""

    prompts: list[int]
    tokens: torch.Tensor  # [b, p]
    mask: torch.Tensor  # [b, p] 1 = real token
    query: torch.Tensor  # [b, p] 1/n on the n query (pronoun) tokens
    candidates: torch.Tensor  # [b, 2, p] 1 on each candidate mention's tokens
    gold: torch.Tensor  # [b] index of the antecedent among the candidates
    answer_ids: torch.Tensor | None  # [b, 2] token id of each candidate, when every candidate is one token


def coref_batch(model: HookedTransformer, run, prompts: list[int], query: str = "pronoun_span") -> CorefBatch:
    """The prompts' stored token ids (exactly what was recorded), padded, with query weights
    and candidate indicators from the stored character spans."""
    q_rows, c_rows, gold, answers = [], [], [], []
    for i in prompts:
        labels = coref_labels(run, i, query)
        if labels is None:
            raise InputError(f"prompt {i} of {run.path} lacks the labels the study needs (pronoun_span, "
                             f"candidate_spans, answer, {query})")
        ids = run.tokens(i).tolist()
        q = run.tokens_in(i, *labels.query)
        cands = [run.tokens_in(i, *span) for span in labels.candidates]
        answers.append([ids[c[0]] for c in cands] if all(len(c) == 1 for c in cands) else None)
        q_rows.append(q)
        c_rows.append(cands)
        gold.append(labels.answer)
    tok = run_batch(run, model, prompts)
    b, p = tok.ids.shape
    qw, cw = torch.zeros(b, p), torch.zeros(b, 2, p)
    for r, (q, cands) in enumerate(zip(q_rows, c_rows)):
        qw[r, q] = 1.0 / len(q)
        for c, toks in enumerate(cands):
            cw[r, c, toks] = 1.0
    answer_ids = torch.tensor(answers) if all(a is not None for a in answers) else None
    return CorefBatch(list(prompts), tok.ids, tok.attention_mask, qw, cw, torch.tensor(gold), answer_ids)


def answers_in_output(model: HookedTransformer, run, prompts: list[int]) -> bool:
    """Does the model itself answer (LM head, prompts ending in a question, one-token candidates)?"""
    labels = coref_labels(run, prompts[0])
    return bool(model.cfg.has_unembed and labels is not None and "question_span" in run.labels(prompts[0])
                and all(len(run.tokens_in(prompts[0], *span)) == 1 for span in labels.candidates))


def answer_metric(batch: CorefBatch, kind: str = "accuracy"):
    """The model's own choice at the last real token: accuracy (1 when the antecedent's
    logit beats the other candidate's) or the logit difference antecedent - other."""
    last = batch.mask.sum(1) - 1
    gold_id = batch.answer_ids.gather(1, batch.gold[:, None])[:, 0]
    other_id = batch.answer_ids.gather(1, 1 - batch.gold[:, None])[:, 0]

    def metric(logits: torch.Tensor, tokens: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        final = logits[torch.arange(len(last)), last].float()
        diff = final.gather(-1, gold_id[:, None])[:, 0] - final.gather(-1, other_id[:, None])[:, 0]
        return (diff > 0).float() if kind == "accuracy" else diff

    return metric


@dataclass
class AntecedentProbe:
    probe: LinearProbe
    layer: int
    hook: str  # full hook name, e.g. blocks.3.hook_resid_post


def fit_antecedent_probe(run, prompts: list[int], layer: int, query: str = "pronoun_span",
                         hook: str = "hook_resid_post", lam: float = 1e-2) -> AntecedentProbe:
    feats, labels, _, _ = span_features(run, [layer], query, "answer", hook, "mean", prompts=prompts)
    return AntecedentProbe(LinearProbe(lam).fit(feats[0], labels), layer, f"blocks.{layer}.{hook}")


def random_heads(n_layers: int, n_heads: int, k: int, exclude: list[tuple[int, int]], rng) -> list[tuple[int, int]]:
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in exclude]
    return [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]


@dataclass
class AblationSetup:
    """Train prompts (probe fit, mean-ablation reference) and held-out prompts (measured),
    padded to one length so the reference lines up with the inputs position by position."""

    train: list[int]
    data: CorefBatch
    reference: torch.Tensor  # [n_ref, p]
    reference_mask: torch.Tensor  # [n_ref, p]
    own_answer: bool  # the model answers itself (else: the antecedent probe measures)
    probe: AntecedentProbe | None


def ablation_setup(model: HookedTransformer, run, used: list[int], layer: int, query: str = "pronoun_span",
                   seed: int = 0) -> AblationSetup:
    check_model_matches(model, run)
    split = split_units(split_groups(run, used), seed)  # twins stay on one side, as in the probe table
    train = [p for p, s in zip(used, split) if s == 0]
    held = [p for p, s in zip(used, split) if s != 0]
    if len(train) < 10 or len(held) < 5:
        raise InputError(f"{len(used)} labelled prompts are too few for the ablation tests; record at least 20")
    own = answers_in_output(model, run, used)
    probe = None if own else fit_antecedent_probe(run, train, layer, query)
    ref, data = coref_batch(model, run, train, query), coref_batch(model, run, held, query)
    width = max(ref.tokens.shape[1], data.tokens.shape[1])

    def widen(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[-1]))

    data = CorefBatch(data.prompts, widen(data.tokens), widen(data.mask), widen(data.query), widen(data.candidates),
                      data.gold, data.answer_ids)
    return AblationSetup(train, data, widen(ref.tokens), widen(ref.mask), own, probe)


def accuracy_metric(setup: AblationSetup):
    """The model's answer accuracy where it answers, else the antecedent probe's accuracy."""
    d = setup.data
    if setup.own_answer:
        return answer_metric(d), "the model's answer accuracy"
    return (probe_accuracy(setup.probe.probe, setup.probe.hook, d.query, d.gold.numpy()),
            f"antecedent probe accuracy (layer {setup.probe.layer})")


def setup_metric(setup: AblationSetup, metric: str = "accuracy", heads: list[tuple[int, int]] | None = None):
    """The per-example metric on the held-out prompts and what it is, by name: ``accuracy``
    or ``antecedent-score`` (of ``heads``)."""
    d = setup.data
    if metric == "antecedent-score":
        if not heads:
            raise InputError("the antecedent-score metric needs the heads whose attention it measures")
        return antecedent_score(heads, d.query, d.candidates, d.gold), "antecedent score of " + ", ".join(
            head_label(la, h) for la, h in heads)
    if metric != "accuracy":
        raise InputError(f"unknown metric {metric!r} on a run with gold antecedents; use accuracy or antecedent-score")
    return accuracy_metric(setup)


def sweep(model: HookedTransformer, setup: AblationSetup, metric: str = "accuracy",
          heads: list[tuple[int, int]] | None = None, method: str = "mean") -> pd.DataFrame:
    """Per-head ablation sweep on the held-out prompts: ``accuracy`` (the model's answer or
    the antecedent probe) or ``antecedent-score`` (attention from the pronoun to the gold
    minus the other candidate, averaged over ``heads``)."""
    fn, what = setup_metric(setup, metric, heads)
    d = setup.data
    return head_ablation_sweep(model, d.tokens, fn, method, setup.reference, attention_mask=d.mask,
                               reference_mask=setup.reference_mask).assign(metric=what)


@dataclass(frozen=True)
class LogitDifferences:
    """Mean logit difference antecedent - other candidate on the held-out prompts, where the
    model answers itself (accuracy saturates; the difference shows partial effects)."""

    clean: float
    mean_ablated: float
    zero_ablated: float


@dataclass(frozen=True)
class AblationSummary:
    """``heads`` ablated together on the held-out prompts, against random sets of as many
    other heads (mean ablation, the train prompts as reference)."""

    heads: tuple[tuple[int, int], ...]
    measure: str  # what the accuracies are: the model's answer accuracy, or the antecedent probe's
    n_train: int  # reference prompts of the mean ablation
    n_held_out: int  # prompts measured
    clean: float
    mean_ablated: float
    zero_ablated: float
    random_mean: float  # over n_random draws of as many other heads, mean-ablated
    random_min: float
    random_max: float
    n_random: int  # draws
    n_random_sets: int  # distinct sets of as many other heads that exist
    logit_diff: LogitDifferences | None  # None where a probe measures (the model does not answer)

    @property
    def drop(self) -> float:
        """How much mean-ablating the heads lowers the measure."""
        return self.clean - self.mean_ablated

    @property
    def beats_random(self) -> bool:
        """Does ablating the heads lower the measure below every random set of as many?"""
        return self.mean_ablated < self.random_min

    @property
    def few_random_sets(self) -> bool:
        """Fewer distinct random sets exist than were drawn: the comparison says little."""
        return self.n_random_sets < self.n_random


@torch.no_grad()
def ablation_tests(model: HookedTransformer, setup: AblationSetup, heads: list[tuple[int, int]], seed: int = 0,
                   n_random: int = 10) -> AblationSummary:
    """Ablate ``heads`` together (mean and zero) vs random sets of as many other heads."""
    d = setup.data
    metric, what = accuracy_metric(setup)
    refs = reference_z(model, setup.reference, setup.reference_mask)  # once for all the conditions

    def measure(ablated: list[tuple[int, int]], method: str = "mean", fn=metric) -> float:
        hooks = ablate_heads_hooks(model, ablated, method, refs) if ablated else []
        return evaluate(model, d.tokens, fn, hooks, d.mask)[0].mean().item()

    rng = np.random.default_rng(seed)
    random_acc = [measure(random_heads(model.cfg.n_layers, model.cfg.n_heads, len(heads), heads, rng))
                  for _ in range(n_random)]
    logit_diff = None
    if setup.own_answer:
        diff = answer_metric(d, "difference")
        logit_diff = LogitDifferences(measure([], fn=diff), measure(heads, fn=diff), measure(heads, "zero", fn=diff))
    return AblationSummary(
        heads=tuple((int(layer), int(h)) for layer, h in heads), measure=what, n_train=len(setup.train),
        n_held_out=len(d.prompts), clean=measure([]), mean_ablated=measure(heads), zero_ablated=measure(heads, "zero"),
        random_mean=float(np.mean(random_acc)), random_min=float(np.min(random_acc)),
        random_max=float(np.max(random_acc)), n_random=n_random,
        n_random_sets=math.comb(model.cfg.n_layers * model.cfg.n_heads - len(heads), len(heads)),
        logit_diff=logit_diff)


def twin_pairs(run, used: list[int]) -> list[tuple[int, int]]:
    """(clean, corrupted) prompt pairs: same ``pair_id``, different antecedent, same token
    length (positions must line up). One pair per pair id."""
    groups = twin_groups((i, run.labels(i)) for i in used)
    pairs = []
    for members in groups.values():
        by_answer: dict[int, int] = {}
        for i in members:
            by_answer.setdefault(int(run.labels(i)["answer"]), i)
        if len(by_answer) == 2 and len(run.tokens(by_answer[0])) == len(run.tokens(by_answer[1])):
            pairs.append((by_answer[0], by_answer[1]))
    return pairs


@torch.no_grad()
def patching_tests(model: HookedTransformer, run, pairs: list[tuple[int, int]], probe: AntecedentProbe | None,
                   query: str = "pronoun_span", direction: Direction = "denoise") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patches of heads and residual positions for the twin pairs of the modal token length
    (so positions line up), denoising (clean into corrupted) or noising (corrupted into
    clean), measured by the model's logit difference between the clean prompt's antecedent
    and the other candidate where the model answers, else by the probe's log-odds for the
    clean antecedent."""
    if not pairs:
        raise InputError("no twin pairs (same pair_id, different antecedent, same token length) to patch")
    lengths = [len(run.tokens(c)) for c, _ in pairs]
    modal = max(set(lengths), key=lengths.count)
    pairs = [pr for pr, n in zip(pairs, lengths) if n == modal]
    clean = coref_batch(model, run, [c for c, _ in pairs], query)
    corrupt = coref_batch(model, run, [w for _, w in pairs], query)
    if not torch.equal(clean.query, corrupt.query):
        raise InputError("the twins' pronouns sit at different token positions; patching needs them aligned")
    own = answers_in_output(model, run, [c for c, _ in pairs])
    if not own and probe is None:
        raise InputError(f"{model.cfg.model_name} does not answer these prompts itself (no question with one-token "
                         "candidates), so an antecedent probe must measure the patches, and the run lacks the "
                         "hook_resid_post it reads; record 'blocks.*.hook_resid_post'")
    margin = answer_metric(clean, "difference") if own else probe_margin(probe.probe, probe.hook, clean.query,
                                                                          clean.gold.numpy())
    heads = patch_heads(model, clean.tokens, corrupt.tokens, margin, direction)
    resid = patch_residual(model, clean.tokens, corrupt.tokens, margin, direction)
    tokens = run.str_tokens(pairs[0][0])
    resid["token"] = [tokens[p] for p in resid.position]
    what = "logit difference" if own else "probe log-odds"
    return heads.assign(n_pairs=len(pairs), metric=what), resid.assign(n_pairs=len(pairs), metric=what)
