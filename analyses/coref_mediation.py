"""Causal mediation analysis per attention head (Vig et al. 2020, "Investigating Gender Bias in
Language Models Using Causal Mediation Analysis"), for the coreference study on a decoder
language model asked a question after each prompt (``coref_interventions.continuation_batch``).

The outcome of a prompt x is the model's answer preference y(x) = log p(antecedent's
continuation) - log p(other's), in nats (``continuation_metric(batch, "difference")``). The
intervention is the twin x' that keeps the antecedent (the answer) and changes the pronoun
(WinoBias pro -> anti: the pronoun's gender flips, so the gender stereotype stops pointing at
the antecedent; WinoGender's male/female/neutral variants). In the difference form, as means
over the pairs:

- total effect TE = y(x') - y(x): what changing the pronoun does to the answer;
- natural indirect effect NIE_h = y(x, z_h <- z_h(x')) - y(x): the part of the change that
  flows through head h alone (h's output set to its value under x', everything else as in x);
- natural direct effect NDE_h = y(x', z_h <- z_h(x)) - y(x): the change that happens while h
  is held at its value under x, i.e. what does not need h.

The mediator is a head's output ``hook_z`` at every position, patched by
``analyses.patching.patch_heads`` (denoising: run one side with the other's z; its ``patched``
column is the mean outcome). NIE and NDE do not add up to TE unless the model is linear in the
mediator; ``nie_share`` = NIE / TE says how much of the total one head carries on its own.

Positions must line up, so a pair's x and x' rows are refused unless they match token for
token except where the pronoun is (in the sentence and in the question): same lengths, the
same candidate continuations at the same positions, the pronoun at the same place
(``check_mediation_aligned``). Pairs that do not align are dropped and reported; pairs of
different lengths ride in one right-padded batch (the mask is shared by the twins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models import HookedTransformer
from probe.errors import InputError
from probe.head_labels import check_top, head_label
from probe.prompts import twin_groups

from .ablation import evaluate
from .coref import DEFAULT_QUESTION, coref_labels
from .coref_interventions import CorefBatch, continuation_batch, continuation_metric
from .patching import patch_heads
from .run_checks import check_model_matches
from .twin_stats import flip_test, group_bootstrap_ci

CHUNK_PAIRS = 16  # pairs per patching batch: patch_heads runs n_heads copies of it per layer
TE_TOLERANCE = 1e-6  # |TE| below this: nothing to mediate, no share (patch_heads' own threshold)
CHUNK_TOLERANCE = 1e-5  # a chunk's own |TE| must clear this, with a margin over float noise between batchings
NO_EFFECT = "no total effect to mediate"


# ------------------------------------------------------------------ pairs


def pronoun_text(run, i: int) -> str | None:
    """Prompt ``i``'s pronoun as the sentence writes it, lower-cased ("He" and "he" are one
    pronoun), or None when the prompt lacks the study's labels."""
    labels = coref_labels(run, i)
    if labels is None:
        return None
    return run.prompt_records[i]["text"][slice(*labels.pronoun)].lower()


def mediation_pairs(run, used: list[int]) -> list[tuple[int, int]]:
    """(x, x') pairs of prompts in `used`: same pair_id (probe.prompts.twin_groups), same answer,
    different pronoun text, same token length. Oriented so that x is the twin whose gender
    stereotype picks the antecedent and x' the one whose stereotype does not, where the data
    says (``probe.design.stereotype_choice``); otherwise in the group's order. One pair per
    (group, answer, x'): a WinoBias pro/anti group gives one, a WinoGender triple two."""
    from probe.design import stereotype_choice  # lazily: the store layer's design labels

    pairs = []
    for members in twin_groups((i, run.labels(i)) for i in used).values():
        by_answer: dict[int, list[int]] = {}
        for i in members:
            labels = coref_labels(run, i)
            if labels is not None:
                by_answer.setdefault(labels.answer, []).append(i)
        for answer, same in by_answer.items():
            # x: the twin whose stereotype points at the antecedent, else the group's first
            x = next((i for i in same if stereotype_choice(run.labels(i)) == answer), same[0])
            said, length = pronoun_text(run, x), len(run.tokens(x))
            pairs += [(x, j) for j in same
                      if j != x and pronoun_text(run, j) != said and len(run.tokens(j)) == length]
    return pairs


# ------------------------------------------------------------------ alignment


def misalignment(base: CorefBatch, intervened: CorefBatch) -> str | None:
    """Why two ``continuation_batch``es of twins cannot be patched position for position, or
    None when they can: the same masks (so lengths), antecedents, candidate continuations and
    where they are read, and the pronoun in the same place. The question's pronoun token may
    differ ('he' vs 'she'): that is the intervention (``check_aligned`` would refuse it)."""
    a, b = base.continuation, intervened.continuation
    if a is None or b is None:
        return "a batch asks the model no question"
    if a.texts != b.texts:
        return f"their candidates' continuations differ ({a.texts} vs {b.texts})"
    if base.tokens.shape != intervened.tokens.shape or not torch.equal(base.mask, intervened.mask):
        return "their token lengths differ (the sentence, or the question with its pronoun)"
    if not torch.equal(base.gold, intervened.gold):
        return "their antecedents differ"
    if not all(torch.equal(u, v) for u, v in ((a.row, b.row), (a.pos, b.pos), (a.token, b.token), (a.slot, b.slot))):
        return "their continuations are read at different positions"
    if not torch.equal(base.query, intervened.query):
        return "their pronouns sit at different token positions"
    return None


def check_mediation_aligned(base: CorefBatch, intervened: CorefBatch) -> None:
    """Refuse twins whose rows do not line up (``misalignment``): a head's output is patched at
    every position, so position p of x' must be position p of x."""
    problem = misalignment(base, intervened)
    if problem is not None:
        raise InputError(f"the twins of a mediation pair do not line up token for token after the question: {problem}; "
                         "mediation patches each head's output at every position, so x and x' must differ only "
                         "in the pronoun")


def split_aligned(model: HookedTransformer, run, pairs: Sequence[tuple[int, int]], question: str, query: str
                  ) -> tuple[list[tuple[int, int]], list[tuple[tuple[int, int], str]]]:
    """(pairs that line up, [(pair, why not)] for the others), each pair checked on its own
    (tokenization only, no forward pass)."""
    kept, dropped = [], []
    for pair in pairs:
        x, x_ = (continuation_batch(model, run, [i], question, query) for i in pair)
        problem = misalignment(x, x_)
        if problem is None:
            kept.append(pair)
        else:
            dropped.append((pair, problem))
    return kept, dropped


# ------------------------------------------------------------------ chunks


def effect_chunks(effects: Sequence[float], size: int, tol: float = CHUNK_TOLERANCE) -> list[list[int]]:
    """Indices of the pairs in consecutive chunks of about ``size`` whose own mean total effect
    clears ``tol`` (``patch_heads`` refuses a batch whose two sides score the same): a chunk
    that does not is merged with its neighbour, until one chunk is left at worst."""
    n = len(effects)
    chunks = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
    i = 0
    while i < len(chunks):
        if len(chunks) == 1 or abs(float(np.mean([effects[k] for k in chunks[i]]))) >= tol:
            i += 1
            continue
        j = i + 1 if i + 1 < len(chunks) else i - 1
        lo, hi = min(i, j), max(i, j)
        chunks[lo:hi + 1] = [chunks[lo] + chunks[hi]]
        i = lo
    return chunks


def outcomes(model: HookedTransformer, run, prompts: list[int], question: str, query: str,
             size: int = CHUNK_PAIRS) -> np.ndarray:
    """[prompts] y = log p(antecedent) - log p(other) after ``question``, unpatched."""
    out = []
    for s in range(0, len(prompts), size):
        batch = continuation_batch(model, run, prompts[s:s + size], question, query)
        out.append(evaluate(model, batch.tokens, continuation_metric(batch, "difference"),
                            attention_mask=batch.mask)[0].numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class ChunkPatches:
    """One chunk's patched outcomes, as means over its pairs."""

    n: int  # pairs
    y_base: float  # mean y(x)
    y_intervened: float  # mean y(x')
    nie: np.ndarray  # [layers, heads] mean y(x, z_h <- z_h(x'))
    nde: np.ndarray  # [layers, heads] mean y(x', z_h <- z_h(x))


def patch_chunk(model: HookedTransformer, run, pairs: list[tuple[int, int]], question: str, query: str
                ) -> ChunkPatches:
    """Both patches of every head on one chunk of aligned pairs (two ``patch_heads`` calls)."""
    base = continuation_batch(model, run, [x for x, _ in pairs], question, query)
    intervened = continuation_batch(model, run, [x_ for _, x_ in pairs], question, query)
    check_mediation_aligned(base, intervened)
    metric = continuation_metric(base, "difference")  # the same rows, tokens and antecedents read on both sides
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    try:
        # denoise runs `corrupt` with `clean`'s z: NIE runs x with x''s z, NDE runs x' with x's z
        indirect = patch_heads(model, intervened.tokens, base.tokens, metric, "denoise", attention_mask=base.mask)
        direct = patch_heads(model, base.tokens, intervened.tokens, metric, "denoise", attention_mask=base.mask)
    except InputError as e:  # the two sides score the same on this chunk
        raise InputError(f"{NO_EFFECT}: the pronoun's swap does not change the model's answer on these "
                         f"{len(pairs)} pairs ({e})") from e
    return ChunkPatches(len(pairs), float(indirect.corrupt.iloc[0]), float(indirect.clean.iloc[0]),
                        indirect.patched.to_numpy().reshape(shape), direct.patched.to_numpy().reshape(shape))


# ------------------------------------------------------------------ the analysis


@dataclass(frozen=True)
class Mediation:
    """Per-head natural indirect and direct effects of the pronoun swap x -> x' on the answer."""

    table: pd.DataFrame  # one row per head, by layer, head: layer, head, nie, nde, te, nie_share, y_nie, y_nde, n_pairs
    total_effect: float  # TE = y_intervened - y_base
    y_base: float  # mean y(x), nats
    y_intervened: float  # mean y(x'), nats
    n_pairs: int
    question: str
    dropped: tuple[tuple[int, int], ...] = ()  # pairs given that did not line up token for token
    pair_effects: tuple[float, ...] = ()  # y(x') - y(x) of each kept pair, in order

    def total_effect_ci(self, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of TE over the pairs (each pair is one twin group)."""
        effects = np.asarray(self.pair_effects)
        low, high = group_bootstrap_ci(effects, np.arange(len(effects)), seed=seed)
        return float(low), float(high)

    def total_effect_p(self, seed: int = 0) -> float:
        """Two-sided sign-flip p-value of TE = 0 over the pairs (the swap does nothing on average)."""
        effects = np.asarray(self.pair_effects)[:, None]
        groups = np.arange(len(effects))
        one_sided = min(float(flip_test(effects, 0.0, groups, seed=seed)[0]),
                        float(flip_test(-effects, 0.0, groups, seed=seed)[0]))
        return min(1.0, 2 * one_sided)


def mediation_table(model: HookedTransformer, parts: list[ChunkPatches]) -> tuple[pd.DataFrame, float, float]:
    """The chunks' means, weighted by their pairs, as one per-head table; and y(x), y(x')."""
    n = sum(p.n for p in parts)
    weight = np.array([p.n for p in parts], dtype=float) / n  # [chunks]
    y_base = float(sum(w * p.y_base for w, p in zip(weight, parts)))
    y_intervened = float(sum(w * p.y_intervened for w, p in zip(weight, parts)))
    y_nie = sum(w * p.nie for w, p in zip(weight, parts))  # [layers, heads]
    y_nde = sum(w * p.nde for w, p in zip(weight, parts))
    te = y_intervened - y_base
    layer, head = np.meshgrid(np.arange(model.cfg.n_layers), np.arange(model.cfg.n_heads), indexing="ij")
    nie = (y_nie - y_base).ravel()
    table = pd.DataFrame({
        "layer": layer.ravel(), "head": head.ravel(), "nie": nie, "nde": (y_nde - y_base).ravel(), "te": te,
        "nie_share": nie / te if abs(te) >= TE_TOLERANCE else np.nan, "y_nie": y_nie.ravel(), "y_nde": y_nde.ravel(),
        "n_pairs": n})
    return table.sort_values(["layer", "head"], ignore_index=True), y_base, y_intervened


@torch.no_grad()
def head_mediation(model: HookedTransformer, run, pairs: Sequence[tuple[int, int]], question: str = DEFAULT_QUESTION,
                   query: str = "pronoun_span", chunk_pairs: int = CHUNK_PAIRS) -> Mediation:
    """NIE and NDE of every head for the (x, x') ``pairs`` (``mediation_pairs``), the model
    asked ``question`` after each prompt; pairs that do not line up are dropped (listed in
    ``dropped``), the rest are patched ``chunk_pairs`` at a time (memory: n_heads copies of a
    chunk per forward pass) and averaged. InputError when no pair lines up, or when the swap
    does not move the answer on average (no total effect to mediate)."""
    check_model_matches(model, run)
    if not pairs:
        raise InputError("no mediation pairs (twins with the same antecedent and another pronoun) to analyse")
    if isinstance(chunk_pairs, bool) or not isinstance(chunk_pairs, int) or chunk_pairs < 1:
        raise InputError(f"chunk_pairs must be a positive integer, not {chunk_pairs!r}")
    kept, dropped = split_aligned(model, run, [(int(x), int(x_)) for x, x_ in pairs], question, query)
    if not kept:
        (x, x_), why = dropped[0]
        raise InputError(f"none of the {len(dropped)} mediation pairs lines up token for token after the question "
                         f"(prompts {x} and {x_}: {why}); mediation patches each head's output at every position")
    effect = (outcomes(model, run, [x_ for _, x_ in kept], question, query, chunk_pairs)
              - outcomes(model, run, [x for x, _ in kept], question, query, chunk_pairs))  # [pairs] y(x') - y(x)
    if abs(float(effect.mean())) < TE_TOLERANCE:
        raise InputError(f"{NO_EFFECT}: on {len(kept)} pairs the pronoun's swap changes the answer's log-prob "
                         f"difference by {float(effect.mean()):+.2e} nats on average")
    parts = [patch_chunk(model, run, [kept[k] for k in chunk], question, query)
             for chunk in effect_chunks(effect.tolist(), chunk_pairs)]
    table, y_base, y_intervened = mediation_table(model, parts)
    return Mediation(table, y_intervened - y_base, y_base, y_intervened, len(kept), question,
                     tuple(pair for pair, _ in dropped), tuple(float(e) for e in effect))


# ------------------------------------------------------------------ prose


def top_nie(m: Mediation, top: int) -> pd.DataFrame:
    """The ``top`` heads by |NIE|, largest first (ties by layer, head)."""
    order = m.table.assign(size=m.table.nie.abs()).sort_values(["size", "layer", "head"],
                                                               ascending=[False, True, True], kind="stable")
    return order.head(check_top(top)).drop(columns="size")


def render_mediation(m: Mediation, attention_heads: list[tuple[int, int]], top: int = 5) -> list[str]:
    """Markdown lines: what TE, NIE and NDE are here, the heads with the largest |NIE|, and
    whether the heads attention names (``attention_heads``) are among them."""
    best = top_nie(m, top)
    share = abs(m.total_effect) >= TE_TOLERANCE
    lines = [
        "## Causal mediation by head",
        "",
        f"Each prompt x is swapped for its twin x' with the same antecedent and another pronoun (WinoBias: pro -> "
        f"anti), and y is the model's answer preference after the question {m.question!r}: log p(antecedent) - "
        f"log p(other), in nats (Vig et al. 2020; difference form, means over {m.n_pairs} pairs).",
        "",
        f"- total effect TE = y(x') - y(x) = {m.total_effect:+.3f} (y(x) = {m.y_base:+.3f}, "
        f"y(x') = {m.y_intervened:+.3f});",
        "- natural indirect effect NIE of a head: y(x with that head's output as under x') - y(x), the effect "
        "carried by the head alone;",
        "- natural direct effect NDE: y(x' with that head's output held as under x) - y(x), the effect without it.",
    ]
    if m.dropped:
        lines.append(f"- {len(m.dropped)} pair{'s' * (len(m.dropped) != 1)} did not line up token for token and "
                     "were left out.")
    lines += ["", f"Top {len(best)} heads by |NIE|:", ""]
    for _, r in best.iterrows():
        part = f", {r.nie_share:.0%} of TE" if share else ""
        lines.append(f"- {head_label(r.layer, r['head'])}: NIE {r.nie:+.3f}, NDE {r.nde:+.3f}{part}")
    if not share:
        lines.append(f"- |TE| < {TE_TOLERANCE:g}: no share of the total effect is defined.")
    lines += ["", *agreement_lines(best, attention_heads)]
    return lines


def agreement_lines(best: pd.DataFrame, attention_heads: list[tuple[int, int]]) -> list[str]:
    """Which of the heads attention names are among the top heads by |NIE| (agree) and which not."""
    if not attention_heads:
        return ["Attention accuracy names no heads to compare with."]
    ranked = [(int(r.layer), int(r["head"])) for _, r in best.iterrows()]
    heads = [(int(la), int(h)) for la, h in attention_heads]
    agree = [h for h in heads if h in ranked]
    lines = [f"Of the {len(heads)} heads attention accuracy names, {len(agree)} "
             f"{'is' if len(agree) == 1 else 'are'} among the top {len(ranked)} by |NIE|:", ""]
    for la, h in heads:
        verdict = f"agree (rank {ranked.index((la, h)) + 1})" if (la, h) in ranked else "disagree"
        lines.append(f"- {head_label(la, h)}: {verdict}")
    return lines
