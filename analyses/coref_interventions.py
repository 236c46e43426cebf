"""Do the coreference heads matter? The causal half of the coreference study.

Attention from the pronoun to its antecedent is a correlation; these tests intervene:

- the measuring device is the model's own answer where it gives one: a decoder with an LM
  head on prompts that end in a question, ``question_span``, with one-token candidates, as
  toy-coref's (which candidate gets the higher logit at the last token); a decoder language
  model on any other prompts (SmolLM2 on WinoBias) is asked a question after each prompt
  (``coref.DEFAULT_QUESTION``) and answers the candidate whose continuation it finds more
  probable (the sum of the continuation's token log-probabilities; ``continuation_batch``);
  otherwise a probe for the antecedent (``analyses.probes``, from the pronoun's
  representation at the best layer, fitted on the train prompts), so the tests work on an
  encoder without an LM head (MiniLM) too;
- ablation: the study's heads mean-ablated together vs random sets of as many other heads in
  the same layers (several draws), and the per-head sweep on held-out prompts (probe accuracy; and the antecedent
  attention score of the study's heads, i.e. which earlier heads feed them);
- patching: for prompt pairs of the run that share a ``pair_id`` but not the antecedent (the
  tired/wide twins), each head's output and each [layer, position] of the residual stream is
  patched from the clean into the corrupted prompt (denoising, the default) or the other way
  (noising), measured by the logit (log-prob, probe log-odds) difference between the clean
  antecedent and the other candidate, normalised (patched - corrupt) / (clean - corrupt).

Asking a decoder (``continuation_batch``): a prompt's row is its stored token ids (exactly what
was recorded), then the question's tokens, then a candidate's continuation; the pieces are
tokenized separately and concatenated. Tokens both candidates' continuations start with (" the")
are read once and count for both (the same log-probability, so the difference does not depend
on them); after them, one row serves both candidates whenever one of them is a single token (its
log-probability is read at the same position as the other's first token); a prompt whose two
candidates both keep several tokens gets a second row. Log-probabilities are read from the last
block's ``resid_post`` through the model's final norm and unembedding at those positions only,
which is what the forward pass computes there, without logits over the vocabulary at every
other position. The per-prompt score is log p(antecedent) - log p(other), in nats; the accuracy
is the share of prompts where it is positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer
from models.tokens import pad, pad_id
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
    same_layer_random_heads,
    same_layer_sets,
)
from .coref import DEFAULT_QUESTION, answer_texts, check_question, coref_labels
from .patching import Direction, patch_heads, patch_residual
from .probe_features import span_features, split_groups
from .probes import LinearProbe, split_units
from .run_checks import check_model_matches
from .run_inputs import run_batch


@dataclass(frozen=True)
class Continuation:
    """Where a batch asked a question (``continuation_batch``) holds each candidate's
    log-probability: item ``i`` is token ``token[i]`` predicted at (``row[i]``, ``pos[i]``),
    and adds to candidate ``slot[i] % 2`` of prompt ``slot[i] // 2``."""

    question: str  # the template asked
    texts: list[tuple[str, str]]  # each prompt's two candidate continuations (" the developer", ...)
    row: torch.Tensor  # [items]
    pos: torch.Tensor  # [items]
    token: torch.Tensor  # [items]
    slot: torch.Tensor  # [items] prompt * 2 + candidate
    n_prompts: int  # rows 0 .. n_prompts-1 are the prompts in order; later rows repeat some of them
    hook: str  # the last block's resid_post, which the log-probabilities are read from
    readout: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)  # resid [k, m] -> logits [k, vocab]


@dataclass
class CorefBatch:
    """Padded token ids of some of the run's prompts with the study's labels as tensors.
    Rows are the prompts in order; a batch that asks a question (``continuation``) may add
    rows after them (a prompt whose candidates need one row each), with that prompt's labels."""

    prompts: list[int]
    tokens: torch.Tensor  # [b, p]
    mask: torch.Tensor  # [b, p] 1 = real token
    query: torch.Tensor  # [b, p] 1/n on the n query (pronoun) tokens
    candidates: torch.Tensor  # [b, 2, p] 1 on each candidate mention's tokens
    gold: torch.Tensor  # [b] index of the antecedent among the candidates
    answer_ids: torch.Tensor | None  # [b, 2] token id of each candidate, when every candidate is one token
    continuation: Continuation | None = None  # where the answer to the appended question is read


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


def piece_ids(model: HookedTransformer, text: str) -> list[int]:
    """Token ids of a piece of text that continues a sequence (no special tokens added)."""
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError(f"{text!r} is no token for {model.cfg.model_name}; the question and the candidates need words")
    return ids


def continuation_batch(model: HookedTransformer, run, prompts: list[int], question: str = DEFAULT_QUESTION,
                       query: str = "pronoun_span") -> CorefBatch:
    """The prompts, each followed by ``question`` (its pronoun filled in) and a candidate's
    continuation, as rows the model reads to answer (see the module's docstring): the labels
    of ``coref_batch`` on the sentence's tokens, and where each candidate's log-probability is."""
    check_question(question)
    n = len(prompts)
    rows: list[list[int]] = []  # row k: prompt k
    second: list[tuple[int, list[int]]] = []  # (k, row) of prompts whose candidates need a row each: rows n, n + 1, ...
    items: list[tuple[int, int, int, int]] = []  # (row, pos, token, slot); a second row j is written -1 - j here
    texts = []
    for k, i in enumerate(prompts):
        asked, conts = answer_texts(run, i, question)
        texts.append(conts)
        ids = [piece_ids(model, c) for c in conts]
        shared = 0  # leading tokens both continuations have; each keeps one at least
        while shared < min(map(len, ids)) - 1 and ids[0][shared] == ids[1][shared]:
            shared += 1
        asked_ids = run.tokens(i).tolist() + piece_ids(model, asked)
        prefix = asked_ids + ids[0][:shared]
        # the shared tokens are read once, on the prompt's row, and count for both candidates
        items += [(k, len(asked_ids) - 1 + j, t, 2 * k + c) for j, t in enumerate(ids[0][:shared]) for c in (0, 1)]
        rest = [c[shared:] for c in ids]
        longer = int(len(rest[1]) > len(rest[0]))  # the prompt's row holds its tokens (all but the last)
        rows.append(prefix + rest[longer][:-1])
        items += [(k, len(prefix) - 1 + j, t, 2 * k + longer) for j, t in enumerate(rest[longer])]
        other, row = 1 - longer, k  # one token: read where the other's first token is
        if len(rest[other]) > 1:
            second.append((k, prefix + rest[other][:-1]))
            row = -len(second)
        items += [(row, len(prefix) - 1 + j, t, 2 * k + other) for j, t in enumerate(rest[other])]
    rows += [r for _, r in second]
    owner = list(range(n)) + [k for k, _ in second]
    items = [(r if r >= 0 else n - 1 - r, p, t, slot) for r, p, t, slot in items]
    base = coref_batch(model, run, prompts, query)
    tok = pad(rows, pad_id(model.tokenizer, model.cfg), "right")
    width, index = tok.ids.shape[1], torch.tensor(owner)

    def widen(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[-1]))[index]

    row, pos, token, slot = (torch.tensor(column) for column in zip(*items))
    cfg = model.cfg

    def readout(x: torch.Tensor) -> torch.Tensor:  # what the forward pass does after the last block
        return model.unembed(model.ln_final(x) if cfg.final_norm else x)

    continuation = Continuation(question, texts, row, pos, token, slot, len(prompts),
                                f"blocks.{cfg.n_layers - 1}.hook_resid_post", readout)
    return CorefBatch(list(prompts), tok.ids, tok.attention_mask, widen(base.query), widen(base.candidates),
                      base.gold[index], None, continuation)


def candidate_logprobs(continuation: Continuation, resid: torch.Tensor) -> torch.Tensor:
    """[prompts, 2] log-probability of each candidate's continuation from the last block's
    resid_post [rows, p, m] of a ``continuation_batch``."""
    c = continuation
    logp = torch.log_softmax(c.readout(resid[c.row, c.pos].float()).float(), -1)  # [items, vocab]
    picked = logp.gather(-1, c.token[:, None])[:, 0]
    return torch.zeros(2 * c.n_prompts).index_add(0, c.slot, picked).view(c.n_prompts, 2)


def logprob_metric(batch: CorefBatch):
    """[prompts, 2]: each candidate's log-probability in a ``continuation_batch``."""
    c = batch.continuation

    def metric(out: torch.Tensor | None, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        return candidate_logprobs(c, cache[c.hook])

    metric.reads, metric.uses_output = (c.hook,), False  # the forward stops after the last block
    return metric


def continuation_metric(batch: CorefBatch, kind: str = "accuracy"):
    """The model's answer to the question: per prompt, accuracy (1 when the antecedent's
    continuation is the more probable) or the log-prob difference antecedent - other."""
    c = batch.continuation
    gold = batch.gold[:c.n_prompts, None]
    logprobs = logprob_metric(batch)

    def metric(out: torch.Tensor | None, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
        logp = logprobs(out, tokens, cache)
        diff = logp.gather(1, gold)[:, 0] - logp.gather(1, 1 - gold)[:, 0]
        return (diff > 0).float() if kind == "accuracy" else diff

    metric.reads, metric.uses_output = (c.hook,), False
    return metric


def answers_by_continuation(model: HookedTransformer, run, prompts: list[int],
                            question: str = DEFAULT_QUESTION) -> bool:
    """Is the model asked ``question`` after each prompt: a decoder with an LM head whose
    prompts do not end in a question it answers (toy-coref's, ``answers_in_output``), and
    whose tokenizer writes the question in known tokens (toy-coref's word list does not)?"""
    cfg = model.cfg
    if not (cfg.has_unembed and cfg.causal and model.tokenizer is not None and prompts):
        return False
    if answers_in_output(model, run, prompts):
        return False
    unknown = getattr(model.tokenizer, "unk_token_id", None)
    asked, conts = answer_texts(run, prompts[0], check_question(question))
    return all(unknown is None or unknown not in model.tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in (asked, *conts))


@torch.no_grad()
def answer_table(model: HookedTransformer, run, prompts: list[int], question: str = DEFAULT_QUESTION,
                 batch_size: int = 64) -> pd.DataFrame:
    """The model's answer on each prompt, asked ``question`` after it: one row per prompt with
    the question, the antecedent's and the other candidate's continuation, their
    log-probabilities (sums over their tokens, nats), the difference and whether it is positive."""
    check_model_matches(model, run)
    rows = []
    for start in range(0, len(prompts), batch_size):
        part = prompts[start:start + batch_size]
        batch = continuation_batch(model, run, part, question)
        c = batch.continuation
        logp = evaluate(model, batch.tokens, logprob_metric(batch), attention_mask=batch.mask)[0]
        for k, i in enumerate(part):
            g = int(batch.gold[k])
            rows.append({"prompt": i, "question": answer_texts(run, i, question)[0], "gold": c.texts[k][g].strip(),
                         "other": c.texts[k][1 - g].strip(), "logp_gold": float(logp[k, g]),
                         "logp_other": float(logp[k, 1 - g]), "difference": float(logp[k, g] - logp[k, 1 - g]),
                         "correct": bool(logp[k, g] > logp[k, 1 - g])})
    return pd.DataFrame(rows)


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
    padded to one length so the reference lines up with the inputs position by position. A
    decoder asked the question (``data.continuation``) has no probe to fit, so nothing is held
    out: every prompt is measured, and the reference is the same prompts (their mean)."""

    train: list[int]
    data: CorefBatch
    reference: torch.Tensor  # [n_ref, p]
    reference_mask: torch.Tensor  # [n_ref, p]
    own_answer: bool  # the model answers itself (else: the antecedent probe measures)
    probe: AntecedentProbe | None

    @property
    def held_out(self) -> bool:
        """Are the measured prompts disjoint from the reference (train) prompts?"""
        return self.data.continuation is None


def ablation_setup(model: HookedTransformer, run, used: list[int], layer: int, query: str = "pronoun_span",
                   seed: int = 0, question: str | None = None) -> AblationSetup:
    """What the ablation tests run on: a decoder language model is asked ``question``
    (default `coref.DEFAULT_QUESTION`) after every prompt; otherwise the prompts are split
    into train (reference, probe) and held-out (measured) prompts, twins on one side."""
    check_model_matches(model, run)
    if answers_by_continuation(model, run, used, question or DEFAULT_QUESTION):
        data = continuation_batch(model, run, used, question or DEFAULT_QUESTION, query)
        n = len(used)  # the reference: each prompt once (its later rows repeat it)
        return AblationSetup(list(used), data, data.tokens[:n], data.mask[:n], True, None)
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


CONTINUATION_MEASURE = "the model's answer accuracy (the antecedent's continuation the more probable after the question)"


def accuracy_metric(setup: AblationSetup):
    """The model's answer accuracy where it answers, else the antecedent probe's accuracy."""
    d = setup.data
    if d.continuation is not None:
        return continuation_metric(d), CONTINUATION_MEASURE
    if setup.own_answer:
        return answer_metric(d), "the model's answer accuracy"
    return (probe_accuracy(setup.probe.probe, setup.probe.hook, d.query, d.gold.numpy()),
            f"antecedent probe accuracy (layer {setup.probe.layer})")


def setup_metric(setup: AblationSetup, metric: str = "accuracy", heads: list[tuple[int, int]] | None = None):
    """The per-example metric on the held-out prompts and what it is, by name: ``accuracy``,
    ``difference`` (where the model answers: the logit or log-prob difference antecedent -
    other) or ``antecedent-score`` (of ``heads``)."""
    d = setup.data
    if metric == "difference":
        if not setup.own_answer:
            raise InputError("the difference metric reads the model's own answer, and this model is measured by a "
                             "probe; use accuracy")
        fn, name = difference_metric(setup)
        return fn, f"{name} antecedent - other"
    if metric == "antecedent-score":
        if not heads:
            raise InputError("the antecedent-score metric needs the heads whose attention it measures")
        score = antecedent_score(heads, d.query, d.candidates, d.gold)
        if d.continuation is not None:  # each prompt once: its first row (later rows repeat some prompts)
            score = first_rows(score, d.continuation.n_prompts)
        return score, "antecedent score of " + ", ".join(head_label(la, h) for la, h in heads)
    if metric != "accuracy":
        raise InputError(f"unknown metric {metric!r} on a run with gold antecedents; use accuracy or antecedent-score")
    return accuracy_metric(setup)


def first_rows(metric, n: int):
    """``metric`` on the first ``n`` rows of the batch only (what it reads unchanged)."""

    def first(out, tokens, cache):
        return metric(out, tokens, cache)[:n]

    first.reads, first.uses_output = metric.reads, metric.uses_output
    return first


def difference_metric(setup: AblationSetup):
    """Where the model answers itself: the per-prompt difference antecedent - other whose sign
    is its answer (the logit difference at the prompt's last token, or the log-prob
    difference of the continuations), and its name."""
    d = setup.data
    if d.continuation is not None:
        return continuation_metric(d, "difference"), "log-prob difference"
    return answer_metric(d, "difference"), "logit difference"


def sweep(model: HookedTransformer, setup: AblationSetup, metric: str = "accuracy",
          heads: list[tuple[int, int]] | None = None, method: str = "mean") -> pd.DataFrame:
    """Per-head ablation sweep on the held-out prompts: ``accuracy`` (the model's answer or
    the antecedent probe), ``difference`` (the model's, where it answers) or
    ``antecedent-score`` (attention from the pronoun to the gold minus the other candidate,
    averaged over ``heads``)."""
    fn, what = setup_metric(setup, metric, heads)
    d = setup.data
    return head_ablation_sweep(model, d.tokens, fn, method, setup.reference, attention_mask=d.mask,
                               reference_mask=setup.reference_mask).assign(metric=what)


@dataclass(frozen=True)
class LogitDifferences:
    """Mean logit difference antecedent - other candidate on the held-out prompts, where the
    model answers itself (accuracy saturates; the difference shows partial effects); for a
    decoder asked a question, the log-prob difference of the two continuations."""

    clean: float
    mean_ablated: float
    zero_ablated: float
    random_mean: float | None = None  # the random sets of the AblationSummary, mean-ablated
    random_min: float | None = None
    random_max: float | None = None
    name: str = "logit difference"


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
    held_out: bool = True  # the measured prompts are not the reference ones (False: all prompts, their own mean)
    metric_layer: int | None = None  # the last layer whose heads can move the measure (None: the output, every one)
    same_layers: bool = True  # the random sets have as many heads in each layer as ``heads`` (else: any heads)

    def measurable(self, layer: int) -> bool:
        """Can ablating a head of ``layer`` change the measure at all?"""
        return self.metric_layer is None or layer <= self.metric_layer

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
    # where the model answers, one pass per condition gives both: its answer is the difference's sign
    fn, name = difference_metric(setup) if setup.own_answer else (metric, None)

    def measure(ablated: list[tuple[int, int]], method: str = "mean") -> tuple[float, float | None]:
        """(accuracy, mean difference or None) with ``ablated`` heads ablated by ``method``."""
        hooks = ablate_heads_hooks(model, ablated, method, refs) if ablated else []
        value = evaluate(model, d.tokens, fn, hooks, d.mask)[0]
        if name is None:
            return value.mean().item(), None
        return (value > 0).float().mean().item(), value.mean().item()

    rng = np.random.default_rng(seed)
    cfg = model.cfg
    # random sets of the same size and layer distribution (a later layer's heads do more, or less,
    # by position alone); where a layer has too few other heads for that, any other heads
    same_layers = same_layer_sets(heads, cfg.n_heads) > 0  # 0: some layer has too few other heads
    draw = ((lambda: same_layer_random_heads(heads, cfg.n_heads, rng)) if same_layers
            else (lambda: random_heads(cfg.n_layers, cfg.n_heads, len(heads), heads, rng)))
    random = [measure(draw()) for _ in range(n_random)]
    clean, mean, zero = measure([]), measure(heads), measure(heads, "zero")
    random_acc = [acc for acc, _ in random]
    logit_diff = None
    if name is not None:
        random_diff = [diff for _, diff in random]
        logit_diff = LogitDifferences(clean[1], mean[1], zero[1], float(np.mean(random_diff)),
                                      float(np.min(random_diff)), float(np.max(random_diff)), name)
    return AblationSummary(
        heads=tuple((int(layer), int(h)) for layer, h in heads), measure=what, n_train=len(setup.train),
        n_held_out=len(d.prompts), clean=clean[0], mean_ablated=mean[0], zero_ablated=zero[0],
        random_mean=float(np.mean(random_acc)), random_min=float(np.min(random_acc)),
        random_max=float(np.max(random_acc)), n_random=n_random,
        n_random_sets=(same_layer_sets(heads, cfg.n_heads) if same_layers
                       else math.comb(cfg.n_layers * cfg.n_heads - len(heads), len(heads))),
        logit_diff=logit_diff, held_out=setup.held_out,
        metric_layer=setup.probe.layer if setup.probe is not None else None, same_layers=same_layers)


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
                   query: str = "pronoun_span", direction: Direction = "denoise", question: str | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patches of heads and residual positions for the twin pairs of the modal token length
    (so positions line up), denoising (clean into corrupted) or noising (corrupted into
    clean), measured by the model's logit difference between the clean prompt's antecedent
    and the other candidate where the model answers (a decoder language model: the log-prob
    difference of the two continuations after ``question``, default `coref.DEFAULT_QUESTION`),
    else by the probe's log-odds for the clean antecedent."""
    if not pairs:
        raise InputError("no twin pairs (same pair_id, different antecedent, same token length) to patch")
    lengths = [len(run.tokens(c)) for c, _ in pairs]
    modal = max(set(lengths), key=lengths.count)
    pairs = [pr for pr, n in zip(pairs, lengths) if n == modal]
    clean_ids, corrupt_ids = [c for c, _ in pairs], [w for _, w in pairs]
    own = answers_in_output(model, run, clean_ids)
    asks = not own and answers_by_continuation(model, run, clean_ids, question or DEFAULT_QUESTION)
    if asks:
        clean = continuation_batch(model, run, clean_ids, question or DEFAULT_QUESTION, query)
        corrupt = continuation_batch(model, run, corrupt_ids, question or DEFAULT_QUESTION, query)
        check_aligned(clean, corrupt, modal)
    else:
        clean, corrupt = coref_batch(model, run, clean_ids, query), coref_batch(model, run, corrupt_ids, query)
    if not torch.equal(clean.query, corrupt.query):
        raise InputError("the twins' pronouns sit at different token positions; patching needs them aligned")
    if not own and not asks and probe is None:
        raise InputError(f"{model.cfg.model_name} does not answer these prompts itself (no question with one-token "
                         "candidates), so an antecedent probe must measure the patches, and the run lacks the "
                         "hook_resid_post it reads; record 'blocks.*.hook_resid_post'")
    if asks:
        margin, what = continuation_metric(clean, "difference"), "log-prob difference"
    elif own:
        margin, what = answer_metric(clean, "difference"), "logit difference"
    else:
        margin, what = probe_margin(probe.probe, probe.hook, clean.query, clean.gold.numpy()), "probe log-odds"
    mask = clean.mask if asks else None  # rows asking the question can differ in length: padded
    heads = patch_heads(model, clean.tokens, corrupt.tokens, margin, direction, attention_mask=mask)
    resid = patch_residual(model, clean.tokens, corrupt.tokens, margin, direction, attention_mask=mask)
    tokens = position_tokens(model, clean) if asks else run.str_tokens(pairs[0][0])
    resid["token"] = [tokens[p] for p in resid.position]
    return heads.assign(n_pairs=len(pairs), metric=what), resid.assign(n_pairs=len(pairs), metric=what)


def check_aligned(clean: CorefBatch, corrupt: CorefBatch, sentence_length: int) -> None:
    """Twins asked the question must line up token for token after their sentences (all
    ``sentence_length`` tokens long): the same rows, question and candidate tokens."""
    a, b = clean.continuation, corrupt.continuation
    if not (torch.equal(clean.mask, corrupt.mask) and a.texts == b.texts
            and torch.equal(clean.tokens[:, sentence_length:], corrupt.tokens[:, sentence_length:])
            and all(torch.equal(x, y) for x, y in ((a.row, b.row), (a.pos, b.pos), (a.slot, b.slot)))):
        raise InputError("the twins' questions or candidate continuations differ (another pronoun, other "
                         "candidates); patching needs them aligned token for token")


def position_tokens(model: HookedTransformer, batch: CorefBatch) -> list[str]:
    """A label for each position of a right-padded batch: the token of the first row that is
    real there."""
    first = batch.mask.bool().float().argmax(0)  # [p] the first row with a real token (rows are never empty at 0)
    return [model.to_str_tokens([int(batch.tokens[int(r), p])])[0] for p, r in enumerate(first)]
